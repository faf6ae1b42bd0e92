"""J&F of a model on a DAVIS folder through the runtime's Tracker (the shipped inference path)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mevos.data.davis import DavisFolder
from mevos.eval.evaluate import GlobalScores, ObjectScores, baseline_sequence, evaluate_sequence
from mevos.model.network import MevosNet
from mevos.runtime.backend import TorchBackend
from mevos.runtime.tracker import Tracker, TrackerConfig


@dataclass(frozen=True)
class DavisResult:
    overall: GlobalScores
    per_sequence: dict[str, float]  # sequence -> J&F
    baseline: GlobalScores  # copy-the-first-mask
    sequences: tuple[str, ...]


def segment_sequence(model: MevosNet, frames: list[np.ndarray], first_mask: np.ndarray,
                     config: TrackerConfig) -> np.ndarray:
    """Run the tracker over a sequence from its first mask -> T x H x W uint8 labels."""
    tracker = Tracker(TorchBackend(model, device="cpu", precision="fp32"), config)
    out = [tracker.step(f, masks=first_mask if i == 0 else None).labels for i, f in enumerate(frames)]
    return np.stack(out)


def evaluate_davis(model: MevosNet, root: str | os.PathLike[str], config: TrackerConfig,
                   sequences: Sequence[str] | None = None) -> DavisResult:
    """Segment every sequence (or those named) of a DAVIS folder and score it by the official protocol.
    The model is copied, so a model being trained keeps its mode and device."""
    model = copy.deepcopy(model).cpu().eval()
    davis = DavisFolder(root)
    names = tuple(sequences or davis.sequences)
    objs: list[ObjectScores] = []
    base: list[ObjectScores] = []
    per_seq: dict[str, float] = {}
    with torch.inference_mode():
        for seq in names:
            frames = list(davis.frames(seq))
            gt = np.stack(list(davis.masks(seq)))[: len(frames)]
            first = np.where(gt[0] == 255, 0, gt[0]).astype(np.uint8)
            pred = segment_sequence(model, frames[: len(gt)], first, config)
            scores = evaluate_sequence(gt, pred, name=seq)
            objs += scores
            base += baseline_sequence(gt, name=seq)
            per_seq[seq] = GlobalScores.of(scores).JF_mean
    return DavisResult(GlobalScores.of(objs), per_seq, GlobalScores.of(base), names)
