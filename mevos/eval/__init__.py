"""J&F evaluation by the official DAVIS-2017 protocol: metrics, in-memory scoring, folder evaluation.

`metrics` holds J, F and their statistics; `evaluate` scores sequences in memory
(`evaluate_sequence`) or a results folder against a DAVIS root (`evaluate`); `cli` is `mevos eval`.
"""

from mevos.eval.evaluate import (
    Evaluation,
    GlobalScores,
    ObjectScores,
    baseline_sequence,
    evaluate,
    evaluate_sequence,
    global_csv,
    per_object_csv,
    score_objects,
)
from mevos.eval.metrics import boundary_f_measure, region_similarity, seg2bmap, statistics

__all__ = [
    "Evaluation",
    "GlobalScores",
    "ObjectScores",
    "baseline_sequence",
    "boundary_f_measure",
    "evaluate",
    "evaluate_sequence",
    "global_csv",
    "per_object_csv",
    "region_similarity",
    "score_objects",
    "seg2bmap",
    "statistics",
]
