"""J, F and their statistics on hand-made masks whose scores are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mevos.errors import UsageError
from mevos.eval.evaluate import baseline_sequence, evaluate_sequence
from mevos.eval.metrics import (
    boundary_f_measure,
    boundary_tolerance,
    disk,
    region_similarity,
    seg2bmap,
    statistics,
)


def square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------------ seg2bmap


def test_seg2bmap_square_is_the_outline_offset_towards_the_origin() -> None:
    seg = square(4, 4, 1, 3, 1, 3)
    expected = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 1, 0],
            [1, 1, 1, 0],
            [0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(seg2bmap(seg), expected)


def test_seg2bmap_last_row_and_column_rules() -> None:
    # last column compares with south only, last row with east only, bottom-right never a boundary
    np.testing.assert_array_equal(seg2bmap(np.ones((3, 4), bool)), np.zeros((3, 4), bool))
    right = square(3, 4, 0, 3, 3, 4)
    expected = np.zeros((3, 4), bool)
    expected[:, 2] = True
    np.testing.assert_array_equal(seg2bmap(right), expected)
    corner = square(3, 4, 2, 3, 3, 4)
    expected = np.zeros((3, 4), bool)
    expected[1, 2] = expected[1, 3] = expected[2, 2] = True
    np.testing.assert_array_equal(seg2bmap(corner), expected)


def test_seg2bmap_is_per_slice_on_stacks() -> None:
    rng = np.random.default_rng(0)
    stack = rng.random((3, 2, 9, 7)) > 0.5
    out = seg2bmap(stack)
    for idx in np.ndindex(3, 2):
        np.testing.assert_array_equal(out[idx], seg2bmap(stack[idx]))


# ------------------------------------------------------------------------------------ J and F


def test_identical_masks_score_one() -> None:
    m = square(60, 80, 10, 30, 20, 50)
    assert region_similarity(m, m) == 1.0
    assert boundary_f_measure(m, m) == 1.0


def test_disjoint_masks_score_zero() -> None:
    a, b = square(60, 80, 5, 15, 5, 15), square(60, 80, 40, 55, 50, 70)
    assert region_similarity(a, b) == 0.0
    assert boundary_f_measure(a, b) == 0.0


def test_empty_cases_follow_the_official_rules() -> None:
    empty, obj = np.zeros((20, 20), bool), square(20, 20, 5, 10, 5, 10)
    assert region_similarity(empty, empty) == 1.0
    assert boundary_f_measure(empty, empty) == 1.0  # P = R = 1
    assert region_similarity(obj, empty) == 0.0
    assert boundary_f_measure(obj, empty) == 0.0  # nothing predicted: P = 1, R = 0
    assert region_similarity(empty, obj) == 0.0
    assert boundary_f_measure(empty, obj) == 0.0  # nothing true: P = 0, R = 1
    # a mask filling the frame has no boundary (none on the last row/column): F = 1 while J = 0
    full = np.ones((20, 20), bool)
    assert region_similarity(full, empty) == 0.0
    assert boundary_f_measure(full, empty) == 1.0


def test_shifted_square_has_the_hand_counted_boundary_match() -> None:
    # 100x100: tolerance ceil(0.008 * 141.4) = 2 px. A 20x20 square's boundary is the 80-pixel
    # outline of rows/cols 19..39. Shifted 3 px right, 44 of the 80 outline pixels of each lie
    # within 2 px of the other's: 20 on the top row, 20 on the bottom, 2 + 2 near the corners.
    gt = square(100, 100, 20, 40, 20, 40)
    pred = square(100, 100, 20, 40, 23, 43)
    assert boundary_tolerance(100, 100) == 2
    assert region_similarity(gt, pred) == pytest.approx(340 / 460, abs=1e-15)
    assert boundary_f_measure(gt, pred) == pytest.approx(44 / 80, abs=1e-15)
    # with a 3 px tolerance every outline pixel matches
    assert boundary_f_measure(gt, pred, bound_th=3) == 1.0


def test_void_pixels_are_left_out() -> None:
    gt = square(30, 30, 5, 15, 5, 15)
    pred = square(30, 30, 5, 15, 5, 20)
    void = square(30, 30, 0, 30, 15, 30)
    assert region_similarity(gt, pred) == pytest.approx(100 / 150)
    assert region_similarity(gt, pred, void) == 1.0
    assert boundary_f_measure(gt, pred, void) == 1.0


def test_stacks_score_each_frame() -> None:
    gt = np.stack([square(40, 40, 5, 20, 5, 20)] * 3)
    pred = np.stack([gt[0], np.zeros((40, 40), bool), square(40, 40, 25, 35, 25, 35)])
    np.testing.assert_array_equal(region_similarity(gt, pred), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(boundary_f_measure(gt, pred), [1.0, 0.0, 0.0])


def _brute_f(gt: np.ndarray, pred: np.ndarray, radius: int) -> float:
    """The official recipe literally: dilate both boundaries by the disk, count the overlaps."""

    def dilate(b: np.ndarray) -> np.ndarray:
        h, w = b.shape
        pad = np.pad(b, radius)
        out = np.zeros_like(b)
        for dy, dx in zip(*np.nonzero(disk(radius))):
            out |= pad[dy : dy + h, dx : dx + w]
        return out

    gb, fb = seg2bmap(gt), seg2bmap(pred)
    n_gt, n_fg = int(gb.sum()), int(fb.sum())
    if n_fg == 0 and n_gt > 0:
        p, r = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        p, r = 1.0, 1.0
    else:
        p = int((fb & dilate(gb)).sum()) / float(n_fg)
        r = int((gb & dilate(fb)).sum()) / float(n_gt)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_boundary_matching_equals_full_disk_dilation() -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(2, 48, 2))
        blobs = []
        for _ in range(2):
            coarse = rng.random((h // 4 + 2, w // 4 + 2)) > rng.uniform(0.3, 0.7)
            blobs.append(np.kron(coarse, np.ones((4, 4), bool))[:h, :w] ^ (rng.random((h, w)) > 0.97))
        for th in (0.008, 0.06, 4):
            radius = boundary_tolerance(h, w, th)
            assert boundary_f_measure(*blobs, bound_th=th) == _brute_f(*blobs, radius)


def test_disk_matches_the_definition() -> None:
    d = disk(2)
    assert d.shape == (5, 5) and d.sum() == 13
    assert d[0, 2] and not d[0, 1] and d[1, 1]
    assert boundary_tolerance(480, 854) == 8  # DAVIS 480p
    with pytest.raises(UsageError):
        boundary_tolerance(10, 10, 2.5)


def test_shape_mismatch_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        region_similarity(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(UsageError):
        boundary_f_measure(np.zeros((4, 4)), np.zeros((4, 4)), void=np.zeros((3, 4)))


# ------------------------------------------------------------------------------------ statistics


def test_statistics_mean_recall_decay() -> None:
    # 8 frames: ids = round(linspace(1, 8, 5) + 1e-10) - 1 = [0, 2, 4, 5, 7]
    # first bin = v[0:3], last bin = v[5:8]
    v = np.array([1.0, 0.9, 0.8, 0.4, 0.5, 0.3, 0.2, 0.1])
    s = statistics(v)
    assert s.mean == pytest.approx(v.mean())
    assert s.recall == 3 / 8
    assert s.decay == pytest.approx(0.9 - 0.2)


def test_statistics_nan_frames() -> None:
    s = statistics(np.array([math.nan, 1.0, 0.2, 0.6]))
    assert s.mean == pytest.approx(0.6)
    assert s.recall == 0.5  # NaN is not above 0.5 but stays in the count, as the official code
    empty = statistics(np.array([]))
    assert math.isnan(empty.mean) and math.isnan(empty.recall) and math.isnan(empty.decay)


def test_decay_past_255_frames() -> None:
    # the official uint8 bin ids wrap past 255 frames and empty the last bin; ours do not
    v = np.zeros(300)
    v[:100] = 1.0
    assert statistics(v).decay == 1.0


# ------------------------------------------------------------------------------------ sequences


def _two_object_sequence() -> np.ndarray:
    gt = np.zeros((6, 40, 50), dtype=np.uint8)
    for t in range(6):
        gt[t, 5:15, 5 + t : 15 + t] = 1
        gt[t, 25:35, 30:40] = 2
    return gt


def test_evaluate_sequence_drops_first_and_last_and_pads_missing_objects() -> None:
    gt = _two_object_sequence()
    pred = np.where(gt == 1, 1, 0).astype(np.uint8)  # object 2 never predicted
    pred[0] = 0
    pred[-1] = 0  # unscored frames
    objs = evaluate_sequence(gt, pred, name="seq")
    assert [o.name for o in objs] == ["seq_1", "seq_2"]
    assert objs[0].J_mean == 1.0 and objs[0].F_mean == 1.0 and objs[0].J_recall == 1.0
    assert objs[0].j.shape == (4,)
    assert objs[1].J_mean == 0.0 and objs[1].F_mean == 0.0 and objs[1].F_recall == 0.0
    with_edges = evaluate_sequence(gt, pred, name="seq", drop_first_last=False)
    assert with_edges[0].J_mean == pytest.approx(4 / 6)


def test_evaluate_sequence_rejects_unknown_objects_and_reads_void_as_background() -> None:
    gt = _two_object_sequence()
    bad = gt.copy()
    bad[2, 0, 0] = 3
    with pytest.raises(UsageError, match="object id 3"):
        evaluate_sequence(gt, bad)
    gt_void = gt.copy()
    gt_void[:, 0:5, :] = 255
    pred = gt.copy()
    pred[:, 0:5, :] = 1
    assert evaluate_sequence(gt_void, pred)[0].J_mean < 1.0
    assert evaluate_sequence(gt_void, pred, void=gt_void == 255)[0].J_mean == 1.0


def test_copy_first_mask_baseline() -> None:
    gt = _two_object_sequence()
    objs = baseline_sequence(gt, name="s")
    assert objs[1].J_mean == 1.0 and objs[1].F_mean == 1.0  # object 2 never moves
    # object 1 moves one pixel right per frame: on frame t the overlap is 10 x (10 - t)
    expected = [(10 - t) / (10 + t) for t in range(1, 5)]
    np.testing.assert_allclose(objs[0].j, expected)
