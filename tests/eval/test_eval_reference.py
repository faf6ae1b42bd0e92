"""Reproduce the official davis2017-evaluation scores of OSVOS on 17 DAVIS-2016 val sequences.

The reference CSVs in shared/data/davis2016-osvos/ were written by the official code (see
shared/data/SOURCES.md, section 2); every number must come out the same to 1e-6.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mevos.eval.evaluate import GLOBAL_COLUMNS, OBJECT_COLUMNS, Evaluation, GlobalScores, evaluate, per_object_csv

#: SOURCES.md: bmx-trees, horsejump-high, kite-surf, motocross-jump, paragliding-launch,
#: scooter-black and soapbox hold several objects in DAVIS-2017; these 10 hold one.
SINGLE10 = (
    "blackswan", "breakdance", "car-roundabout", "car-shadow", "dance-twirl",
    "dog", "drift-chicane", "drift-straight", "libby", "parkour",
)  # fmt: skip

pytestmark = pytest.mark.slow  # about 8 s: 1092 frames of 854x480, scored twice (method and baseline)


def read_csv(path: Path) -> tuple[list[str], dict[str, list[float]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}


@pytest.fixture(scope="module")
def osvos(shared_data: Path) -> tuple[Path, Evaluation]:
    preds = shared_data / "davis2016-osvos"
    if not (preds / "reference_global_official.csv").is_file():
        pytest.skip(f"{preds} holds no reference scores")
    ev = evaluate(shared_data / "davis2016", preds, progress=False)
    g, b = ev.overall, ev.baseline
    print(f"\nall17: J&F {g.JF_mean:.6f} J {g.J_mean:.6f} F {g.F_mean:.6f}; copy-first-mask J&F {b.JF_mean:.6f}")
    return preds, ev


def test_per_object_scores_match_the_official_code(osvos: tuple[Path, Evaluation]) -> None:
    preds, ev = osvos
    for subset in ("all17", "single10"):
        header, ref = read_csv(preds / f"reference_scores_official_{subset}.csv")
        assert header == ["object", *OBJECT_COLUMNS]
        ours = {o.name: o.row() for o in ev.per_object}
        for name, values in ref.items():
            assert ours[name] == pytest.approx(values, abs=1e-6), name
    assert len(ev.per_object) == 17
    # the table we write is the reference file, byte for byte
    assert per_object_csv(ev.per_object) == (preds / "reference_scores_official_all17.csv").read_text()


def test_global_scores_match_the_official_code(osvos: tuple[Path, Evaluation]) -> None:
    preds, ev = osvos
    header, ref = read_csv(preds / "reference_global_official.csv")
    assert header == ["subset", *GLOBAL_COLUMNS]
    single = [o for o in ev.per_object if o.name.rsplit("_", 1)[0] in SINGLE10]
    assert len(single) == 10
    for subset, scores in (("all17", ev.overall), ("single10", GlobalScores.of(single))):
        assert scores.row() == pytest.approx(ref[subset], abs=1e-6), subset
    assert ev.overall.JF_mean == pytest.approx(0.742337, abs=1e-6)


def test_the_method_beats_the_copy_first_mask_baseline(osvos: tuple[Path, Evaluation]) -> None:
    _, ev = osvos
    assert [o.name for o in ev.baseline_per_object] == [o.name for o in ev.per_object]
    assert ev.baseline.JF_mean < ev.overall.JF_mean - 0.3
