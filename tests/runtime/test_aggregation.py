"""Objects are merged by soft aggregation exactly once per frame (not again after the last round)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from mevos.runtime.propagate import soft_aggregate, with_background
from mevos.model import build_model, preset
from mevos.runtime.backend import TorchBackend
from mevos.runtime.tracker import Tracker, TrackerConfig


class RecordingBackend(TorchBackend):
    """The real torch backend, keeping the decoder's last output to compare against."""

    last_logits: Tensor | None = None

    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        self.last_logits = super().decode(readout, value, res3, res2)
        return self.last_logits


def _video(frames: int = 3, size: tuple[int, int] = (48, 64)) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    video = [np.roll(base, 2 * t, axis=1) for t in range(frames)]
    mask = np.zeros(size, np.uint8)
    mask[8:30, 10:30] = 1
    mask[20:44, 36:60] = 2
    return video, mask


@pytest.mark.parametrize("rounds", [1, 2])
def test_refined_probabilities_are_one_soft_aggregation_of_the_decoder_output(rounds: int) -> None:
    backend = RecordingBackend(build_model(preset("small"), seed=3), device="cpu", precision="fp32")
    tracker = Tracker(backend, TrackerConfig(refine_rounds=rounds))
    video, mask = _video()
    tracker.step(video[0], masks=mask)
    for frame in video[1:]:
        result = tracker.step(frame)
        assert backend.last_logits is not None
        once = soft_aggregate(torch.sigmoid(backend.last_logits.float())[:, 0])  # (O+1) x H x W
        np.testing.assert_allclose(result.probs, once[1:].numpy(), atol=1e-6)
        twice = soft_aggregate(once[1:])
        assert not np.allclose(result.probs, twice[1:].numpy(), atol=1e-3), "aggregated twice"
        labels = once.argmax(dim=0)
        assert (result.labels == torch.tensor([0, 1, 2])[labels].numpy()).all()


def test_coarse_mask_without_refinement_is_aggregated_once() -> None:
    tracker = Tracker(TorchBackend(build_model(preset("small"), seed=3)), TrackerConfig(refine_rounds=0))
    video, mask = _video()
    tracker.step(video[0], masks=mask)
    result = tracker.step(video[1])
    assert result.probs.shape == (2, 48, 64)
    total = result.probs.sum(axis=0)
    assert (total <= 1 + 1e-5).all() and (result.probs >= 0).all()


def test_with_background_inverts_the_object_channels_of_soft_aggregate() -> None:
    probs = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    agg = soft_aggregate(probs)
    torch.testing.assert_close(with_background(agg[1:]), agg, atol=1e-6, rtol=0)
