"""J and F, the DAVIS-2017 region and boundary measures, and their per-object statistics.

A reimplementation (numpy only) of the official `davis2017-evaluation` code, which defines the numbers
every VOS paper reports; each function says where it follows that code to the letter. Masks are
boolean (or 0/1) arrays; every function takes a stack `...*H*W` and scores each H*W slice.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from mevos.errors import UsageError

#: boundary tolerance as a fraction of the image diagonal (official default)
BOUND_TH = 0.008


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """J, the intersection over union. gt, pred, void: ...*H*W bool -> ... float64.

    Void pixels count in neither the intersection nor the union. An empty union (neither mask has a
    pixel) scores 1: predicting nothing for an absent object is right.
    """
    gt, pred = _as_bool(gt, pred)
    keep = None if void is None else ~_check_void(void, gt.shape)
    inter = gt & pred
    union = gt | pred
    if keep is not None:
        inter &= keep
        union &= keep
    n_inter = inter.sum(axis=(-2, -1))
    n_union = union.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.asarray(n_inter / n_union, dtype=np.float64)
    j[n_union == 0] = 1.0
    return j


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide boundary of a mask: ...*H*W bool -> ...*H*W bool.

    As the official `_seg2bmap` (after D. Martin's BSDS code): a pixel is on the boundary when it
    differs from its east, south or south-east neighbour. The last row compares with the east
    neighbour only, the last column with the south neighbour only, and the bottom-right pixel is
    never a boundary; so a mask touching the bottom or right image border gets no boundary there.
    """
    seg = np.asarray(mask).astype(bool, copy=False)
    if seg.ndim < 2:
        raise UsageError(f"seg2bmap needs a ...*H*W mask, got shape {seg.shape}")
    b = np.zeros_like(seg)
    b[..., :, :-1] = seg[..., :, :-1] ^ seg[..., :, 1:]
    b[..., :-1, :] |= seg[..., :-1, :] ^ seg[..., 1:, :]
    b[..., :-1, :-1] |= seg[..., :-1, :-1] ^ seg[..., 1:, 1:]
    return b


def boundary_tolerance(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Match radius in pixels: ceil(bound_th * image diagonal), or bound_th itself when >= 1."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            # the official disk of a fractional radius has an even size and an off-centre anchor
            raise UsageError(f"a boundary tolerance in pixels must be a whole number, got {bound_th}")
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def disk(radius: int) -> np.ndarray:
    """(2r+1)*(2r+1) bool structuring element: x^2 + y^2 <= r^2 (skimage's `disk`)."""
    d = np.arange(-radius, radius + 1)
    return d[:, None] ** 2 + d[None, :] ** 2 <= radius * radius


def boundary_f_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> np.ndarray:
    """F, the boundary F-measure. gt, pred, void: ...*H*W bool -> ... float64.

    Boundaries come from `seg2bmap` of each mask with its void pixels cleared. A predicted boundary
    pixel is correct (precision) when a ground-truth boundary pixel lies within the disk of radius
    `boundary_tolerance`; a ground-truth one is found (recall) when a predicted one lies within it.
    Empty boundaries follow the official rules: none predicted but some true -> P=1, R=0; some
    predicted but none true -> P=0, R=1; neither -> P=R=1. F = 2PR/(P+R), 0 when P+R = 0.
    """
    gt, pred = _as_bool(gt, pred)
    if void is not None:
        keep = ~_check_void(void, gt.shape)
        gt = gt & keep
        pred = pred & keep
    h, w = gt.shape[-2:]
    radius = boundary_tolerance(h, w, bound_th)
    lead = gt.shape[:-2]
    gt_b = seg2bmap(gt).reshape(-1, h, w)
    pred_b = seg2bmap(pred).reshape(-1, h, w)
    out = np.empty(gt_b.shape[0], dtype=np.float64)
    for i in range(gt_b.shape[0]):
        out[i] = _f_from_boundaries(gt_b[i], pred_b[i], radius)
    return out.reshape(lead)


def _f_from_boundaries(gt_b: np.ndarray, fg_b: np.ndarray, radius: int) -> float:
    gy, gx = np.nonzero(gt_b)
    fy, fx = np.nonzero(fg_b)
    n_gt, n_fg = gy.size, fy.size
    # the same branches, in the same order, as the official f_measure
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = _count_near(fy, fx, gt_b, radius) / float(n_fg)
        recall = _count_near(gy, gx, fg_b, radius) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _count_near(ys: np.ndarray, xs: np.ndarray, other: np.ndarray, radius: int) -> int:
    """How many of the points (ys, xs) have a pixel of `other` (H*W bool) within `radius`.

    Equal to counting the points inside `other` dilated by `disk(radius)` with nothing beyond the
    image border (what the official cv2.dilate does), without dilating the whole image: the disk is
    2r+1 horizontal runs, and each run's count is a difference of row-wise cumulative sums, read
    only at the points. Exact in integers.
    """
    r = radius
    # only pixels within r of some point can match: work in the points' bounding box plus r
    y0, x0 = max(int(ys.min()) - r, 0), max(int(xs.min()) - r, 0)
    crop = other[y0 : int(ys.max()) + r + 1, x0 : int(xs.max()) + r + 1]
    ys, xs = ys - y0, xs - x0
    h, w = crop.shape
    # cum[r + y, r + 1 + x] = crop[y, :x+1].sum(), with zero margins of r rows and columns around it
    cum = np.zeros((h + 2 * r, w + 2 * r + 1), dtype=np.int32)
    inner = np.cumsum(crop, axis=1, dtype=np.int32)
    cum[r : r + h, r + 1 : r + 1 + w] = inner
    cum[r : r + h, r + 1 + w :] = inner[:, -1:]
    dy, half = _disk_rows(r)
    row = (ys[:, None] + (dy + r)[None, :]) * cum.shape[1]
    hi = row + (xs[:, None] + (half + r + 1)[None, :])
    lo = row + (xs[:, None] + (r - half)[None, :])
    flat = cum.ravel()
    hits = (flat[hi] - flat[lo]).any(axis=1)
    return int(np.count_nonzero(hits))


@functools.lru_cache(maxsize=16)
def _disk_rows(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Row offsets -r..r of `disk(radius)` and the half-width of the disk on each row."""
    dy = np.arange(-radius, radius + 1)
    half = np.array([math.isqrt(radius * radius - d * d) for d in range(-radius, radius + 1)])
    dy.flags.writeable = half.flags.writeable = False  # shared by every call through the cache
    return dy, half


@dataclass(frozen=True)
class Statistics:
    """Per-object summary of per-frame J or F values."""

    mean: float
    recall: float  #: fraction of frames scoring above 0.5
    decay: float  #: mean of the first quarter of the frames minus mean of the last quarter


def statistics(values: np.ndarray) -> Statistics:
    """Mean, recall and decay of one object's per-frame values (T,), as the official db_statistics.

    NaN frames are left out of the means; for recall they count as not above 0.5 (the official
    nanmean of a boolean array). The four decay bins overlap by one frame at their edges, exactly
    as the official ids: round(linspace(1, T, 5) + 1e-10) - 1, bin i = values[ids[i] : ids[i+1] + 1].
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v)) if v.size else math.nan
        recall = float(np.mean(v > 0.5)) if v.size else math.nan
        if v.size == 0:
            return Statistics(mean, recall, math.nan)
        # the official code casts ids to uint8, which wraps past 255 frames; int indices do not
        ids = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
        first = v[ids[0] : ids[1] + 1]
        last = v[ids[3] : ids[4] + 1]
        decay = float(np.nanmean(first) - np.nanmean(last))
    return Statistics(mean, recall, decay)


def _as_bool(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if gt.shape != pred.shape or gt.ndim < 2:
        raise UsageError(f"ground truth {gt.shape} and prediction {pred.shape} must be the same ...*H*W shape")
    return gt, pred


def _check_void(void: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    v = np.asarray(void).astype(bool, copy=False)
    if v.shape != shape:
        raise UsageError(f"void mask {v.shape} does not match the masks {shape}")
    return v
