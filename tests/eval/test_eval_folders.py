"""`evaluate` and `mevos eval` on a tiny DAVIS-layout folder written into tmp_path, and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mevos.cli import main
from mevos.errors import InputError
from mevos.eval.evaluate import GLOBAL_COLUMNS, OBJECT_COLUMNS, baseline_sequence, evaluate, evaluate_sequence

H, W = 36, 48
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)


def write_png(path: Path, labels: np.ndarray, mode: str = "P") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(labels, dtype=np.uint8)
    im = Image.frombytes("P" if mode == "P" else "L", (arr.shape[1], arr.shape[0]), arr.tobytes())
    if mode == "P":
        im.putpalette(PALETTE)
    else:
        im = im.convert(mode)
    im.save(path)


def sequences() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (gt T*H*W, pred T*H*W): one moving object; two objects, the second partly missed."""
    a_gt = np.zeros((5, H, W), np.uint8)
    a_pred = np.zeros_like(a_gt)
    for t in range(5):
        a_gt[t, 8:20, 4 + 3 * t : 16 + 3 * t] = 1
        a_pred[t, 9:20, 5 + 3 * t : 16 + 3 * t] = 1
    b_gt = np.zeros((4, H, W), np.uint8)
    b_gt[:, 2:12, 2:12] = 1
    b_gt[:, 20:34, 25:45] = 2
    b_gt[:, 0, :] = 255  # void row: background in the official protocol
    b_pred = np.where(b_gt == 1, 1, 0).astype(np.uint8)
    b_pred[2, 22:30, 30:40] = 2
    return {"alpha": (a_gt, a_pred), "beta": (b_gt, b_pred)}


@pytest.fixture()
def davis(tmp_path: Path) -> tuple[Path, Path]:
    root, results = tmp_path / "DAVIS", tmp_path / "results"
    for name, (gt, pred) in sequences().items():
        for t in range(gt.shape[0]):
            write_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", gt[t])
            if 0 < t < gt.shape[0] - 1:  # results for unscored frames are not needed
                write_png(results / name / f"{t:05d}.png", pred[t])
    return root, results


def test_folder_evaluation_equals_the_in_memory_one(davis: tuple[Path, Path]) -> None:
    root, results = davis
    ev = evaluate(root, results, progress=False)
    assert ev.sequences == ("alpha", "beta")
    expected, expected_base = [], []
    for name, (gt, pred) in sequences().items():
        expected += evaluate_sequence(gt, pred, name=name)
        expected_base += baseline_sequence(gt, name=name)
    assert [o.name for o in ev.per_object] == ["alpha_1", "beta_1", "beta_2"]
    assert list(ev.per_object) == expected
    assert list(ev.baseline_per_object) == expected_base
    beta_1 = ev.per_object[1]
    assert beta_1.J_mean == 1.0 and beta_1.F_mean == 1.0
    assert ev.overall.n_objects == 3
    means = np.array([o.row() for o in expected]).mean(axis=0)
    assert ev.overall.J_mean == pytest.approx(means[0])
    assert ev.overall.JF_mean == pytest.approx((means[0] + means[3]) / 2)
    assert evaluate(root, results, sequences=["beta"], progress=False).per_object == ev.per_object[1:]


def test_parallel_workers_give_the_same_tables(davis: tuple[Path, Path]) -> None:
    root, results = davis
    assert evaluate(root, results, workers=2, progress=False) == evaluate(root, results, progress=False)


def test_cli_end_to_end(davis: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root, results = davis
    assert main(["eval", "--davis", str(root), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "results" in out and "copy_first_mask" in out and "JF_mean" in out
    with open(results / "per_object.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["object", *OBJECT_COLUMNS]
    assert [r[0] for r in rows[1:]] == ["alpha_1", "beta_1", "beta_2"]
    assert rows[2][1:] == ["1.000000"] * 2 + ["0.000000"] + ["1.000000"] * 2 + ["0.000000"]
    with open(results / "global.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["subset", *GLOBAL_COLUMNS]
    assert [r[0] for r in rows[1:]] == ["results", "copy_first_mask"]
    ev = evaluate(root, results, progress=False)
    assert [float(v) for v in rows[1][1:]] == pytest.approx(ev.overall.row(), abs=5e-7)

    # a prefix, and the sequence list; the CSVs already in the results folder are not sequences
    prefix = tmp_path / "out" / "run1_"
    argv = ["eval", "--davis", str(root), "--results", str(results), "--sequences", "beta", "--out", str(prefix)]
    assert main(argv) == 0
    assert (tmp_path / "out" / "run1_global.csv").is_file()
    assert len((tmp_path / "out" / "run1_per_object.csv").read_text().splitlines()) == 3


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    assert "--results" in capsys.readouterr().out


def _break(results: Path, root: Path, how: str) -> list[str]:
    """Spoil the tiny data set one way; returns the extra CLI arguments."""
    frame = results / "beta" / "00001.png"
    if how == "missing frame":
        frame.unlink()
    elif how == "size":
        write_png(frame, np.zeros((H, W + 2), np.uint8))
    elif how == "extra object":
        write_png(frame, np.full((H, W), 3, np.uint8))
    elif how == "rgb":
        write_png(frame, np.zeros((H, W), np.uint8), mode="RGB")
    elif how == "not an image":
        frame.write_text("not a png")
    elif how == "no gt":
        (results / "gamma").mkdir()
    elif how == "no sequences":
        empty = root.parent / "empty"
        empty.mkdir()
        (empty / "notes.txt").write_text("files are not sequences")
        return ["--results", str(empty)]
    elif how == "no davis":
        return ["--davis", str(root / "nope")]
    elif how == "resolution":
        return ["--resolution", "1080p"]
    elif how == "unknown sequence":
        return ["--sequences", "alpha,zeta"]
    return []


BAD = {
    "missing frame": "beta/00001.png",
    "size": "50x36 but its ground truth",
    "extra object": "object id 3",
    "rgb": "mode RGB",
    "not an image": "not a readable image",
    "no gt": "no ground truth for sequence 'gamma'",
    "no sequences": "no sequences to score",
    "no davis": "is not a folder",
    "resolution": "resolutions there: 480p",
    "unknown sequence": "no ground truth for sequence 'zeta'",
}


@pytest.mark.parametrize("how", list(BAD))
def test_bad_input_is_one_line_and_exit_2(
    how: str, davis: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, results = davis
    extra = _break(results, root, how)
    args = {"--davis": str(root), "--results": str(results)}
    for k, v in zip(extra[::2], extra[1::2]):
        args[k] = v
    argv = ["eval"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mevos eval: error: "), err
    assert "Traceback" not in err
    assert BAD[how] in err
    sequences = args["--sequences"].split(",") if "--sequences" in args else None
    resolution = args.get("--resolution", "480p")
    with pytest.raises(InputError):
        evaluate(args["--davis"], args["--results"], resolution=resolution, sequences=sequences, progress=False)
