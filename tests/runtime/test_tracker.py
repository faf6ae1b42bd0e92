"""Tracker behaviour with hand-made features (exact answers) and with the real small model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mevos.errors import InputError
from mevos.model import build_model, preset
from mevos.runtime import TorchBackend, Tracker, TrackerConfig
from mevos.runtime.geometry import STRIDE

GRID = (6, 10)  # feature cells; frames are 48 x 80 pixels
H, W = GRID[0] * STRIDE, GRID[1] * STRIDE


class BlockCodeBackend:
    """A backend whose key at each feature cell is a one-hot code of the colour of that cell's
    8x8 block: features identify content exactly, so top-1 matching is an exact correspondence.
    Values are the object's mask at stride 8, and the decoder upsamples the value readout."""

    name = "block-code"
    device = torch.device("cpu")

    def __init__(self, codes: int) -> None:
        cfg = preset("small")
        self.codes = codes
        from dataclasses import replace

        self.config = replace(cfg, key_dim=codes + 2, value_dim=4)

    def encode_key(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        red = (image[:, 0, ::STRIDE, ::STRIDE] * 255).round().long()  # B x h x w block codes
        code = F.one_hot(red, self.codes).permute(0, 3, 1, 2).float()
        # A weak time code from the green channel: among equal contents the nearest frame in
        # time scores highest, as real features of a recent frame would.
        angle = image[:, 1:2, ::STRIDE, ::STRIDE] * 2.0
        key = torch.cat([code, 0.1 * torch.cos(angle), 0.1 * torch.sin(angle)], dim=1)
        b, _, h, w = key.shape
        return key, torch.zeros(b, 1, h, w), torch.zeros(b, 1, 2 * h, 2 * w)

    def encode_value(self, image: Tensor, masks: Tensor) -> Tensor:
        return F.avg_pool2d(masks, STRIDE).expand(-1, 4, -1, -1).contiguous()

    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        # The readout of the memory values is the warped mask at stride 8: decode it sharply.
        mask = F.interpolate(readout[:, :1], scale_factor=float(STRIDE), mode="nearest")
        return (mask - 0.5) * 40.0


def coded_frame(shift: tuple[int, int], time: int = 0) -> np.ndarray:
    """A frame whose 8x8 blocks each have a unique red value, rolled by `shift` blocks; the green
    channel carries `time`."""
    codes = np.arange(GRID[0] * GRID[1], dtype=np.uint8).reshape(GRID)
    codes = np.roll(codes, shift, axis=(0, 1))
    frame = np.zeros((H, W, 3), np.uint8)
    frame[..., 0] = np.kron(codes, np.ones((STRIDE, STRIDE), np.uint8))
    frame[..., 1] = 8 * time
    return frame


def block_labels(cells: dict[tuple[int, int], int], shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    lab = np.zeros(GRID, np.uint8)
    for (y, x), i in cells.items():
        lab[y, x] = i
    lab = np.roll(lab, shift, axis=(0, 1))
    return np.kron(lab, np.ones((STRIDE, STRIDE), np.uint8))


CELLS = {(1, 1): 3, (1, 2): 3, (2, 1): 3, (3, 6): 7, (4, 6): 7, (4, 7): 7}


def exact_tracker(**kw: object) -> Tracker:
    cfg = TrackerConfig(top_k=1, refine_rounds=1, **kw)  # type: ignore[arg-type]
    return Tracker(BlockCodeBackend(GRID[0] * GRID[1]), cfg)


def test_hand_made_features_copy_labels_exactly() -> None:
    tracker = exact_tracker()
    first = tracker.step(coded_frame((0, 0)), masks=block_labels(CELLS))
    assert first.object_ids == (3, 7)
    np.testing.assert_array_equal(first.labels, block_labels(CELLS))
    for t, shift in enumerate([(0, 1), (1, 1), (1, 3), (2, 2), (0, 0), (5, 9)], start=1):
        result = tracker.step(coded_frame(shift))
        assert result.index == t
        np.testing.assert_array_equal(result.labels, block_labels(CELLS, shift))
        assert result.probs.shape == (2, H, W)
        assert np.allclose(result.probs[0], result.labels == 3)


def test_add_correct_and_remove_objects_mid_stream() -> None:
    tracker = exact_tracker()
    tracker.step(coded_frame((0, 0)), masks=block_labels({(1, 1): 3}))
    tracker.step(coded_frame((0, 1), time=1))
    # Frame 2: a new object 9 appears; object 3 keeps its tracked pixels.
    given = block_labels({(4, 4): 9, (4, 5): 9}, (0, 2))
    r = tracker.step(coded_frame((0, 2), time=2), masks=given)
    assert r.object_ids == (3, 9)
    np.testing.assert_array_equal(r.labels, block_labels({(1, 1): 3, (4, 4): 9, (4, 5): 9}, (0, 2)))
    # Both are tracked afterwards; object 9 reads only frames from its own first frame on.
    r = tracker.step(coded_frame((1, 3), time=3))
    np.testing.assert_array_equal(r.labels, block_labels({(1, 1): 3, (4, 4): 9, (4, 5): 9}, (1, 3)))
    # Frame 4: object 3 is corrected to another place; the correction is pinned and followed.
    corrected = {(2, 7): 3, (3, 7): 3}
    r = tracker.step(coded_frame((1, 3), time=4), masks=block_labels(corrected, (1, 3)))
    np.testing.assert_array_equal(r.labels, block_labels({**corrected, (4, 4): 9, (4, 5): 9}, (1, 3)))
    r = tracker.step(coded_frame((2, 4), time=5))
    np.testing.assert_array_equal(r.labels, block_labels({**corrected, (4, 4): 9, (4, 5): 9}, (2, 4)))
    # Frame 6: object 3 is removed; it never comes back.
    r = tracker.step(coded_frame((2, 5), time=6), remove=[3])
    assert r.object_ids == (9,)
    np.testing.assert_array_equal(r.labels, block_labels({(4, 4): 9, (4, 5): 9}, (2, 5)))


def test_memory_stays_flat_on_long_streams() -> None:
    tracker = exact_tracker(mem_frames=3, max_pinned=2)
    tracker.step(coded_frame((0, 0)), masks=block_labels(CELLS))
    for t in range(1, 40):
        shift = (t % GRID[0], (2 * t) % GRID[1])
        masks = block_labels(CELLS, shift) if t % 10 == 0 else None
        r = tracker.step(coded_frame(shift), masks=masks)
        np.testing.assert_array_equal(r.labels, block_labels(CELLS, shift))
        assert tracker.memory is not None and tracker.memory.used <= 5
        assert tracker.memory.num_pinned <= 2
    assert tracker.memory.stamp[0] == 0, "the first frame stays pinned"


@pytest.mark.parametrize(
    ("frame", "masks", "remove", "message"),
    [
        (coded_frame((0, 0)), np.zeros((H, W + 8), np.uint8), (), "differs from the frame size"),
        (coded_frame((0, 0)), np.zeros((H, W), np.uint8), (), "has no object"),
        (np.zeros((H + 8, W, 3), np.uint8), None, (), "differs from the session"),
        (coded_frame((0, 0)), None, (4,), "unknown object id"),
        (coded_frame((0, 0)), None, (3, 7), "no objects would be left"),
        (coded_frame((0, 0)).astype(np.float32), None, (), "uint8"),
        (coded_frame((0, 0)), np.full((H, W), 300, np.int32), (), "0..255"),
    ],
)
def test_bad_requests_are_refused_and_lose_nothing(frame, masks, remove, message) -> None:  # noqa: ANN001
    tracker, twin = exact_tracker(), exact_tracker()
    for t in (tracker, twin):
        t.step(coded_frame((0, 0)), masks=block_labels(CELLS))
    with pytest.raises(InputError, match=message):
        tracker.step(frame, masks=masks, remove=remove)
    a, b = tracker.step(coded_frame((1, 2))), twin.step(coded_frame((1, 2)))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.index == b.index == 1


def test_first_frame_needs_a_mask_and_object_limit() -> None:
    tracker = exact_tracker(max_objects=2)
    with pytest.raises(InputError, match="needs a mask"):
        tracker.step(coded_frame((0, 0)))
    with pytest.raises(InputError, match="too many objects"):
        tracker.step(coded_frame((0, 0)), masks=block_labels({(0, 0): 1, (0, 1): 2, (0, 2): 4}))
    assert tracker.step(coded_frame((0, 0)), masks=block_labels({(0, 0): 1})).object_ids == (1,)


@pytest.mark.parametrize("size", [(60, 90), (50, 64)])
def test_real_model_any_input_size(size: tuple[int, int]) -> None:
    from mevos.data.synthetic import SyntheticConfig, generate

    video = generate(SyntheticConfig(height=size[0], width=size[1], num_frames=4, num_objects=2, seed=3))
    backend = TorchBackend(build_model(preset("small")))
    tracker = Tracker(backend, TrackerConfig(short_side=40, mem_frames=2))
    first = tracker.step(video.frames[0], masks=video.labels[0])
    np.testing.assert_array_equal(first.labels, video.labels[0])
    for frame in video.frames[1:]:
        r = tracker.step(frame)
        assert r.labels.shape == size and r.labels.dtype == np.uint8
        assert r.probs.shape == (2, *size)
        assert set(np.unique(r.labels)) <= {0, 1, 2}
        assert r.probs.min() >= 0 and r.probs.max() <= 1
