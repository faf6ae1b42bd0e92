"""The per-frame stages of mevos.runtime.propagate on their own: memory read, soft aggregation,
label map."""

from __future__ import annotations

import pytest
import torch

from mevos.errors import UsageError
from mevos.kernels.reference import readout, topk_affinity
from mevos.runtime import propagate as stages
from mevos.runtime.memory import AffinityConfig, MemoryBank


def _normalised(*shape: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_read_memory_is_one_affinity_and_two_readouts():
    grid, o, cv, ck = (3, 5), 2, 4, 16
    p = grid[0] * grid[1]
    bank = MemoryBank(2, 1, grid, ck, cv, torch.device("cpu"), torch.float32)
    bank.add_objects([1, 2])
    keys, values, masks = _normalised(2, p, ck, seed=1), torch.randn(2, p, o, cv), torch.rand(2, p, o)
    for t in range(2):
        bank.write(keys[t], values[t], masks[t], pinned=t == 0, stamp=t)
    query = _normalised(p, ck, seed=2)
    affinity = AffinityConfig(top_k=3, temperature=0.5, radius=1, chunk_size=4, impl="reference")
    rv, rm = stages.read_memory(bank, query, affinity)
    w, i = topk_affinity(query, keys, k=3, temperature=0.5, grid=grid, radius=1,
                         pinned=torch.tensor([True, False]), chunk_size=4)
    want_v = readout(w, i, values.reshape(2 * p, -1)).view(p, o, cv).permute(1, 2, 0).reshape(o, cv, *grid)
    want_m = readout(w, i, masks.reshape(2 * p, -1)).t().reshape(o, 1, *grid)
    assert torch.equal(rv, want_v) and torch.equal(rm, want_m)
    # The dense baseline selects the same candidates.
    dv, dm = stages.read_memory(bank, query, AffinityConfig(3, 0.5, 1, 4, impl="dense"))
    torch.testing.assert_close(dv, rv) and torch.testing.assert_close(dm, rm)


def test_affinity_impl_is_checked():
    with pytest.raises(UsageError, match="choose one of auto, fused, reference, dense"):
        AffinityConfig(impl="fast")


def test_soft_aggregate_sums_to_one_and_ranks_like_stm():
    probs = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(0))
    agg = stages.soft_aggregate(probs)
    assert agg.shape == (4, 5, 6) and agg.dtype == torch.float32
    assert torch.allclose(agg.sum(0), torch.ones(5, 6), atol=1e-6)
    # STM's formulation: softmax of the logits of the clamped [background, objects].
    full = torch.cat([(1 - probs).prod(0, keepdim=True), probs]).clamp(1e-7, 1 - 1e-7)
    assert torch.allclose(agg, torch.softmax(torch.log(full / (1 - full)), 0), atol=1e-6)


def test_soft_aggregate_without_objects_is_background():
    agg = stages.soft_aggregate(torch.zeros(0, 3, 4))
    assert agg.shape == (1, 3, 4) and torch.allclose(agg, torch.ones(1, 3, 4))
    labels = stages.label_map(agg, torch.tensor([0], dtype=torch.uint8))
    assert labels.dtype == torch.uint8 and torch.equal(labels, torch.zeros(3, 4, dtype=torch.uint8))


def test_label_map_and_label_masks_map_channels_to_objects():
    probs = torch.zeros(2, 2, 3)
    probs[0, 0, :] = 0.9  # object 3 wins the top row
    probs[1, 1, 1:] = 0.8  # object 7 wins two cells of the bottom row
    dist = stages.soft_aggregate(probs)
    labels = stages.label_map(dist, torch.tensor([0, 3, 7], dtype=torch.uint8))
    assert torch.equal(labels, torch.tensor([[3, 3, 3], [0, 7, 7]], dtype=torch.uint8))
    masks = stages.label_masks(dist)
    assert torch.equal(masks, torch.stack([labels == 3, labels == 7]))
    with pytest.raises(UsageError):
        stages.soft_aggregate(torch.zeros(2, 3))
