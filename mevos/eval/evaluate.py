"""Score segmentations against DAVIS ground truth: per object, per sequence, per folder.

The protocol is the official DAVIS-2017 semi-supervised one (`davis2017-evaluation`):
- objects are the ids 1..n of a sequence's first ground-truth frame; each is scored on its own;
- the first frame (given to the method) and the last frame are not scored;
- ground-truth pixels labelled 255 (void) are background, as in the official code, which never
  excludes them in this task; `exclude_void=True` leaves them out of J and F instead;
- a prediction holding an id above n is an error; objects it never mentions score as empty masks;
- the global scores are plain means over all objects, J&F = (J mean + F mean) / 2.

Beside every evaluation goes a floor: the copy-the-first-mask baseline, which predicts the first
frame's ground truth on every frame. A method has to beat it to have tracked anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mevos.errors import InputError, UsageError
from mevos.eval.metrics import boundary_f_measure, region_similarity, statistics

VOID_LABEL = 255
#: columns of the per-object table, in CSV order (after `object`)
OBJECT_COLUMNS = ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")
#: columns of the global table, in CSV order (after `subset`)
GLOBAL_COLUMNS = ("JF_mean",) + OBJECT_COLUMNS


@dataclass(frozen=True)
class ObjectScores:
    """One object's statistics, named `<sequence>_<id>`; `j` and `f` hold its per-frame values."""

    name: str
    J_mean: float
    J_recall: float
    J_decay: float
    F_mean: float
    F_recall: float
    F_decay: float
    j: np.ndarray = field(repr=False, compare=False)
    f: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def from_frames(cls, name: str, j: np.ndarray, f: np.ndarray) -> ObjectScores:
        """Build from per-frame J and F values (T,) float64."""
        js, fs = statistics(j), statistics(f)
        return cls(name, js.mean, js.recall, js.decay, fs.mean, fs.recall, fs.decay, j, f)

    def row(self) -> tuple[float, ...]:
        return tuple(getattr(self, c) for c in OBJECT_COLUMNS)


@dataclass(frozen=True)
class GlobalScores:
    """Means over objects of each per-object statistic, and J&F = (J_mean + F_mean) / 2."""

    JF_mean: float
    J_mean: float
    J_recall: float
    J_decay: float
    F_mean: float
    F_recall: float
    F_decay: float
    n_objects: int = field(default=0, compare=False)

    @classmethod
    def of(cls, objects: Sequence[ObjectScores]) -> GlobalScores:
        """Plain means (not NaN-aware, as the official code) over the objects; NaN when there are none."""
        if not objects:
            return cls(*([math.nan] * len(GLOBAL_COLUMNS)), n_objects=0)
        table = np.array([o.row() for o in objects], dtype=np.float64)
        means = table.mean(axis=0)
        jf = (means[0] + means[3]) / 2.0
        return cls(float(jf), *(float(m) for m in means), n_objects=len(objects))

    def row(self) -> tuple[float, ...]:
        return tuple(getattr(self, c) for c in GLOBAL_COLUMNS)


@dataclass(frozen=True)
class Evaluation:
    """The outcome of `evaluate`: the method's tables and the copy-the-first-mask baseline's."""

    sequences: tuple[str, ...]
    per_object: tuple[ObjectScores, ...]
    overall: GlobalScores
    baseline_per_object: tuple[ObjectScores, ...]
    baseline: GlobalScores


# ---------------------------------------------------------------------------------- in memory


def score_objects(
    gt: np.ndarray, pred: np.ndarray, n_objects: int, void: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of objects 1..n_objects on every frame given.

    gt, pred: T*H*W uint8 label maps (gt without void labels); void: T*H*W bool or None.
    Returns j, f: n_objects*T float64.
    """
    if gt.shape != pred.shape or gt.ndim != 3:
        raise UsageError(f"ground truth {gt.shape} and prediction {pred.shape} must both be T*H*W")
    t_len = gt.shape[0]
    j = np.empty((n_objects, t_len), dtype=np.float64)
    f = np.empty((n_objects, t_len), dtype=np.float64)
    for t in range(t_len):
        v = None if void is None else void[t]
        for k in range(n_objects):
            g, p = gt[t] == k + 1, pred[t] == k + 1
            j[k, t] = region_similarity(g, p, v)
            f[k, t] = boundary_f_measure(g, p, v)
    return j, f


def evaluate_sequence(
    gt_masks: np.ndarray,
    pred_masks: np.ndarray,
    void: np.ndarray | None = None,
    *,
    name: str = "sequence",
    drop_first_last: bool = True,
) -> list[ObjectScores]:
    """Score one sequence held in memory by the official protocol.

    gt_masks: T*H*W uint8 ground-truth ids (0 background, 1..n objects, 255 void = background);
    the objects are the ids of frame 0. pred_masks: T*H*W uint8 predicted ids, same frames.
    void: optional T*H*W bool of pixels to leave out of J and F.
    drop_first_last: leave frames 0 and T-1 unscored, as the benchmark does (frame 0 is the input).
    Returns one ObjectScores per object, named `<name>_<id>`.
    """
    gt = np.asarray(gt_masks)
    pred = np.asarray(pred_masks)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise UsageError(f"gt_masks {gt.shape} and pred_masks {pred.shape} must both be T*H*W")
    if void is not None:
        void = np.asarray(void, dtype=bool)
        if void.shape != gt.shape:
            raise UsageError(f"void {void.shape} does not match the masks {gt.shape}")
    gt = np.where(gt == VOID_LABEL, 0, gt).astype(np.uint8)
    n_objects = int(gt[0].max()) if gt.size else 0
    if drop_first_last:
        gt, pred = gt[1:-1], pred[1:-1]
        void = None if void is None else void[1:-1]
    top = int(pred.max()) if pred.size else 0
    if top > n_objects:
        raise UsageError(f"{name}: the prediction has object id {top} but the ground truth has {n_objects} objects")
    j, f = score_objects(gt, pred.astype(np.uint8, copy=False), n_objects, void)
    return [ObjectScores.from_frames(f"{name}_{k + 1}", j[k], f[k]) for k in range(n_objects)]


def baseline_sequence(
    gt_masks: np.ndarray, void: np.ndarray | None = None, *, name: str = "sequence", drop_first_last: bool = True
) -> list[ObjectScores]:
    """The copy-the-first-mask baseline: every frame predicted as frame 0's ground truth."""
    gt = np.asarray(gt_masks)
    first = np.where(gt[0] == VOID_LABEL, 0, gt[0]).astype(np.uint8)
    pred = np.broadcast_to(first, gt.shape)
    return evaluate_sequence(gt, pred, void, name=name, drop_first_last=drop_first_last)


# ---------------------------------------------------------------------------------- folders


def read_label_png(path: Path) -> np.ndarray:
    """A mask PNG as H*W uint8 ids: palette indices for mode P, values for grayscale."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("P", "L", "1"):
                raise InputError(
                    f"{path}: a mask must be a palette (P) or 8-bit grayscale PNG of object ids, "
                    f"this one is mode {mode}"
                )
            arr = np.array(im)
    except FileNotFoundError:
        raise InputError(f"missing mask file {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None
    return arr.astype(np.uint8, copy=False)


def list_sequences(results_dir: Path) -> list[str]:
    """The sequence folders in a results folder (subfolders, hidden ones skipped), sorted."""
    return sorted(p.name for p in results_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def evaluate(
    davis_root: str | os.PathLike[str],
    results_dir: str | os.PathLike[str],
    *,
    resolution: str = "480p",
    sequences: Iterable[str] | None = None,
    exclude_void: bool = False,
    workers: int = 1,
    progress: bool | None = None,
) -> Evaluation:
    """Score `<results_dir>/<seq>/<frame>.png` against `<davis_root>/Annotations/<resolution>/<seq>/`.

    sequences: the ones to score; default every folder in results_dir. Each result frame has the
    file name of its ground-truth frame. workers > 1 scores sequences in that many processes.
    progress: a tqdm bar over sequences on stderr; None shows it only on a terminal.
    Raises InputError naming the folder or file when the input is not usable.
    """
    from tqdm import tqdm

    root, results = Path(davis_root), Path(results_dir)
    gt_root = root / "Annotations" / resolution
    if not root.is_dir():
        raise InputError(f"DAVIS root {root} is not a folder")
    if not gt_root.is_dir():
        have = sorted(p.name for p in (root / "Annotations").glob("*") if p.is_dir())
        hint = (
            f" (resolutions there: {', '.join(have)})"
            if have
            else " (expected <root>/Annotations/<resolution>/<sequence>/*.png)"
        )
        raise InputError(f"no ground truth folder {gt_root}{hint}")
    if not results.is_dir():
        raise InputError(f"results folder {results} is not a folder")
    if sequences is None:
        names = list_sequences(results)
    else:
        names = [sequences] if isinstance(sequences, str) else list(sequences)
        names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise InputError(f"no sequences to score: {results} holds no sequence folders (one folder of PNGs each)")
    jobs = [_SequenceJob.make(name, gt_root, results, exclude_void) for name in names]

    disable = None if progress is None else not progress  # None: tqdm shows the bar only on a terminal
    bar = tqdm(total=len(jobs), desc="mevos eval", unit="seq", disable=disable)
    try:
        done = list(_run(jobs, workers, lambda: bar.update(1)))
    finally:
        bar.close()
    per_object = tuple(o for objs, _ in done for o in objs)
    base = tuple(o for _, objs in done for o in objs)
    return Evaluation(tuple(names), per_object, GlobalScores.of(per_object), base, GlobalScores.of(base))


@dataclass(frozen=True)
class _SequenceJob:
    name: str
    gt_files: tuple[Path, ...]
    result_dir: Path
    exclude_void: bool

    @classmethod
    def make(cls, name: str, gt_root: Path, results: Path, exclude_void: bool) -> _SequenceJob:
        gt_dir, res_dir = gt_root / name, results / name
        if not gt_dir.is_dir():
            raise InputError(f"no ground truth for sequence '{name}': {gt_dir} is not a folder")
        files = tuple(sorted(gt_dir.glob("*.png")))
        if not files:
            raise InputError(f"no ground truth for sequence '{name}': no *.png in {gt_dir}")
        if not res_dir.is_dir():
            raise InputError(f"no results for sequence '{name}': {res_dir} is not a folder")
        return cls(name, files, res_dir, exclude_void)

    def __call__(self) -> tuple[list[ObjectScores], list[ObjectScores]]:
        """(method's objects, baseline's objects) of this sequence."""
        gt = _read_stack(self.gt_files)
        void = gt == VOID_LABEL
        gt[void] = 0
        n_objects = int(gt[0].max())
        scored = self.gt_files[1:-1]
        pred = np.zeros((len(scored),) + gt.shape[1:], dtype=np.uint8)
        for i, gt_file in enumerate(scored):
            path = self.result_dir / gt_file.name
            if not path.is_file():
                raise InputError(f"missing result frame {path} (one PNG per ground-truth frame, same file names)")
            m = read_label_png(path)
            if m.shape != gt.shape[1:]:
                raise InputError(
                    f"{path} is {m.shape[1]}x{m.shape[0]} but its ground truth {gt_file} is {gt.shape[2]}x{gt.shape[1]}"
                )
            if int(m.max()) > n_objects:
                raise InputError(
                    f"{path} holds object id {int(m.max())} but sequence '{self.name}' has {n_objects} "
                    f"object(s) in its first ground-truth frame"
                )
            pred[i] = m
        gt_scored = gt[1:-1]
        void_scored = void[1:-1] if self.exclude_void else None
        copy = np.broadcast_to(gt[0], gt_scored.shape)
        objs, base = [], []
        for out, p in ((objs, pred), (base, copy)):
            j, f = score_objects(gt_scored, p, n_objects, void_scored)
            out.extend(ObjectScores.from_frames(f"{self.name}_{k + 1}", j[k], f[k]) for k in range(n_objects))
        return objs, base


def _read_stack(files: Sequence[Path]) -> np.ndarray:
    first = read_label_png(files[0])
    stack = np.empty((len(files),) + first.shape, dtype=np.uint8)
    stack[0] = first
    for i, path in enumerate(files[1:], start=1):
        m = read_label_png(path)
        if m.shape != first.shape:
            raise InputError(
                f"ground truth {path} is {m.shape[1]}x{m.shape[0]} but {files[0]} is {first.shape[1]}x{first.shape[0]}"
            )
        stack[i] = m
    return stack


def _call(job: _SequenceJob) -> tuple[list[ObjectScores], list[ObjectScores]]:
    return job()


def _run(
    jobs: Sequence[_SequenceJob], workers: int, tick: Callable[[], None]
) -> Iterator[tuple[list[ObjectScores], list[ObjectScores]]]:
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            yield job()
            tick()
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(_call, job) for job in jobs]
        for fut in futures:
            yield fut.result()
            tick()


# ---------------------------------------------------------------------------------- tables


def per_object_csv(objects: Iterable[ObjectScores]) -> str:
    """The per-object table as CSV text: `object,J_mean,...,F_decay`, 6 decimals."""
    lines = [",".join(("object",) + OBJECT_COLUMNS)]
    lines += [",".join([o.name] + [_fmt(v) for v in o.row()]) for o in objects]
    return "\n".join(lines) + "\n"


def global_csv(rows: Mapping[str, GlobalScores]) -> str:
    """The global table as CSV text: `subset,JF_mean,...,F_decay`, one row per label, 6 decimals."""
    lines = [",".join(("subset",) + GLOBAL_COLUMNS)]
    lines += [",".join([label] + [_fmt(v) for v in g.row()]) for label, g in rows.items()]
    return "\n".join(lines) + "\n"


def format_table(rows: Mapping[str, GlobalScores]) -> str:
    """The global table for a terminal: one row per label, the columns of GLOBAL_COLUMNS."""
    width = max([len(k) for k in rows] + [8])
    head = " " * width + "".join(f"{c:>10s}" for c in GLOBAL_COLUMNS)
    body = [f"{label:<{width}s}" + "".join(f"{v:>10.4f}" for v in g.row()) for label, g in rows.items()]
    return "\n".join([head] + body)


def _fmt(v: float) -> str:
    return f"{v:.6f}"
