"""The synthetic video: determinism, exact visible-pixel labels, real occlusion, DAVIS export."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mevos.data import DavisFolder, SyntheticConfig, generate, write_synthetic
from mevos.errors import UsageError


@pytest.fixture(scope="module")
def video():
    return generate(SyntheticConfig())


def test_shapes_and_dtypes(video) -> None:
    cfg = video.config
    assert len(video.frames) == len(video.labels) == cfg.num_frames == 30
    assert video.frames[0].shape == (240, 320, 3) and video.frames[0].dtype == np.uint8
    assert video.labels[0].shape == (240, 320) and video.labels[0].dtype == np.uint8
    assert video.num_objects == 2 and sorted(video.depth_order) == [1, 2]


def test_same_seed_is_byte_identical_and_seeds_differ(video) -> None:
    again = generate(SyntheticConfig())
    assert all(a.tobytes() == b.tobytes() for a, b in zip(video.frames, again.frames))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(video.labels, again.labels))
    other = generate(SyntheticConfig(seed=1, num_frames=2))
    assert not np.array_equal(other.frames[0], video.frames[0])


def test_labels_are_the_visible_part_of_each_object(video) -> None:
    for lab, full in zip(video.labels, video.amodal):
        expected = np.zeros_like(lab)
        for oid in video.depth_order:  # back to front: later objects cover earlier ones
            expected[full[oid - 1]] = oid
        assert np.array_equal(lab, expected)
        assert set(np.unique(lab)) <= {0, 1, 2}


def test_objects_occlude_each_other(video) -> None:
    overlap = [t for t, full in enumerate(video.amodal) if (full[0] & full[1]).any()]
    assert overlap, "the two objects never overlap"
    t = overlap[len(overlap) // 2]
    back, front = video.depth_order
    hidden = video.amodal[t][back - 1] & ~(video.labels[t] == back)
    assert hidden.sum() > 50  # a real part of the back object is hidden, not a 1-px touch


def test_every_object_whole_and_sizeable_in_frame0() -> None:
    for n in (1, 3, 6):
        v = generate(SyntheticConfig(num_objects=n, seed=n, num_frames=2))
        areas = [(v.labels[0] == i).sum() for i in range(1, n + 1)]
        assert min(areas) > 0.005 * 240 * 320, areas
        assert all(a == v.amodal[0][i].sum() for i, a in enumerate(areas))  # nothing hidden at frame 0


def test_objects_move_and_background_drifts(video) -> None:
    c0 = np.argwhere(video.labels[0] == 1).mean(0)
    c1 = np.argwhere(video.labels[-1] == 1).mean(0)
    assert np.linalg.norm(c1 - c0) > 30
    # Without noise the background of frame t is the one of frame 0 moved by a whole-pixel shift.
    v = generate(SyntheticConfig(noise=0.0, num_frames=13))
    a, b = v.frames[0].astype(int), v.frames[12].astype(int)
    free = (v.labels[0] == 0) & (v.labels[12] == 0)
    m = 8
    errs = {}
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            ok = free[m:-m, m:-m] & free[m + dy:240 - m + dy, m + dx:320 - m + dx]
            errs[dy, dx] = np.abs(a[m:-m, m:-m][ok] - b[m + dy:240 - m + dy, m + dx:320 - m + dx][ok]).max()
    best = min(errs, key=errs.get)
    assert errs[best] == 0 and best != (0, 0)


def test_bad_configs() -> None:
    with pytest.raises(UsageError):
        SyntheticConfig(num_objects=0)
    with pytest.raises(UsageError, match="do not fit"):
        generate(SyntheticConfig(height=32, width=32, num_objects=40))
    with pytest.raises(dataclasses.FrozenInstanceError):
        SyntheticConfig().seed = 3  # type: ignore[misc]


def test_written_as_davis_folder(tmp_path) -> None:
    v = generate(SyntheticConfig(height=48, width=64, num_frames=4, name="toy"))
    frames_dir = write_synthetic(v, tmp_path)
    assert frames_dir == tmp_path / "JPEGImages" / "480p" / "toy"
    davis = DavisFolder(tmp_path)
    assert davis.sequences == ["toy"]
    assert [p.name for p in davis.frame_paths("toy")] == [f"{t:05d}.jpg" for t in range(4)]
    assert np.array_equal(davis.first_mask("toy"), v.labels[0])
    assert all(np.array_equal(a, b) for a, b in zip(davis.masks("toy"), v.labels))
    got = list(davis.frames("toy"))
    assert len(got) == 4 and np.abs(got[1].astype(int) - v.frames[1]).mean() < 6
