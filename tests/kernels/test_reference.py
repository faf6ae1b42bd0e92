"""The PyTorch reference of the propagation ops against brute force written here, independently."""

from __future__ import annotations

import itertools
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mevos.errors import UsageError
from mevos.kernels.reference import dense_topk_affinity, readout, topk_affinity

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Many tiny ops: on a shared 2-core machine, waking a second OpenMP thread per op costs more
    # than the op itself. Restored afterwards so other test modules keep their setting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Brute force: numpy float64, one query at a time, explicit window test per candidate.


def brute_topk(query, memory, k, temperature, grid, pinned=None, radius=None):
    q = query.double().numpy()
    m = memory.double().numpy()
    T, P, C = m.shape
    h, w = grid
    pinned = [True] * T if pinned is None else [bool(f) for f in pinned]
    flat = m.reshape(T * P, C)
    ty, tx = np.divmod(np.arange(T * P) % P, w)
    frame_pinned = np.repeat(np.array(pinned), P)
    weights = np.zeros((P, k))
    indices = np.full((P, k), -1, dtype=np.int64)
    for p in range(P):
        qy, qx = divmod(p, w)
        scores = flat @ q[p] / temperature
        ok = frame_pinned | (
            np.ones(T * P, bool)
            if radius is None
            else (np.abs(ty - qy) <= radius) & (np.abs(tx - qx) <= radius)
        )
        cand = np.nonzero(ok)[0]
        order = np.lexsort((cand, -scores[cand]))[:k]  # score descending, then lower index
        best = cand[order]
        e = np.exp(scores[best] - scores[best].max())
        weights[p, : len(best)] = e / e.sum()
        indices[p, : len(best)] = best
    return weights, indices


def brute_readout(weights, indices, memory):
    wt, ix, m = weights.double().numpy(), indices.numpy(), memory.double().numpy()
    out = np.zeros((wt.shape[0], m.shape[1]))
    for p in range(wt.shape[0]):
        for j in range(wt.shape[1]):
            if ix[p, j] >= 0:
                out[p] += wt[p, j] * m[ix[p, j]]
    return out


def keys(*shape, seed=0):
    # float64 normals rounded to float32: scores without ties or near-ties at these sizes.
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) / shape[-1] ** 0.5).float()


PINNED = {
    "all": lambda T: None,
    "none": lambda T: torch.zeros(T, dtype=torch.bool),
    "mixed": lambda T: torch.arange(T) % 2 == 0,  # frame 0 pinned, like the first frame
}


# --------------------------------------------------------------------------------------------
# topk_affinity


@pytest.mark.parametrize("radius", [None, 0, 1, 3])
@pytest.mark.parametrize("chunk_size", [4, 13, 1024])
@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_topk_matches_brute_force(k, T, chunk_size, radius):
    case = hash((k, T, chunk_size, radius)) & 0xFFFF
    grid = [(5, 7), (3, 11), (6, 4)][case % 3]  # not square, P not a multiple of the chunk
    pinned = PINNED[["all", "none", "mixed"][(k + T + chunk_size) % 3]](T)
    P, C = grid[0] * grid[1], 8
    query, memory = keys(P, C, seed=case), keys(T, P, C, seed=case + 1)
    args = dict(k=k, temperature=0.7, grid=grid, pinned=pinned, radius=radius)

    weights, indices = topk_affinity(query, memory, chunk_size=chunk_size, **args)
    want_w, want_i = brute_topk(query, memory, **args)

    assert weights.dtype == torch.float32 and indices.dtype == torch.int64
    assert weights.shape == indices.shape == (P, k)
    np.testing.assert_array_equal(indices.numpy(), want_i)
    np.testing.assert_allclose(weights.numpy(), want_w, atol=1e-6, rtol=0)

    dense_w, dense_i = dense_topk_affinity(query, memory, **args)
    np.testing.assert_array_equal(dense_i.numpy(), want_i)
    np.testing.assert_allclose(dense_w.numpy(), want_w, atol=1e-6, rtol=0)


def test_fewer_candidates_than_k_leave_empty_slots():
    grid, T, k = (4, 5), 2, 10
    query, memory = keys(20, 6), keys(T, 20, 6, seed=1)
    pinned = torch.zeros(T, dtype=torch.bool)
    args = dict(k=k, temperature=1.0, grid=grid, pinned=pinned, radius=1)
    weights, indices = topk_affinity(query, memory, chunk_size=3, **args)
    want_w, want_i = brute_topk(query, memory, **args)
    np.testing.assert_array_equal(indices.numpy(), want_i)
    np.testing.assert_allclose(weights.numpy(), want_w, atol=1e-6, rtol=0)
    # Corner cell 0: 2 x 2 window in each of 2 frames = 8 candidates, 2 empty slots.
    assert (indices[0, 8:] == -1).all() and (weights[0, 8:] == 0).all()
    assert torch.allclose(weights.sum(1), torch.ones(20))
    # radius 0: only the query's own cell in each frame.
    w0, i0 = topk_affinity(query, memory, k=3, temperature=1.0, grid=grid, pinned=pinned, radius=0)
    assert sorted(i0[7, :2].tolist()) == [7, 27] and i0[7, 2] == -1 and w0[7, 2] == 0


@pytest.mark.parametrize("chunk_size", [2, 5, 64])
def test_ties_go_to_the_lower_index(chunk_size):
    grid, k = (3, 4), 5
    query = keys(12, 4)
    frame = keys(12, 4, seed=3)
    memory = torch.stack([frame, frame, frame])  # every score appears three times
    for radius, pinned in [(None, None), (1, torch.tensor([False, True, False]))]:
        args = dict(k=k, temperature=0.5, grid=grid, pinned=pinned, radius=radius)
        w, i = topk_affinity(query, memory, chunk_size=chunk_size, **args)
        want_w, want_i = brute_topk(query, memory, **args)
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_allclose(w.numpy(), want_w, atol=1e-6, rtol=0)
        dense_w, dense_i = dense_topk_affinity(query, memory, **args)
        assert torch.equal(dense_i, i)
    # All scores equal: the first k memory positions, uniform weights.
    w, i = topk_affinity(torch.zeros(12, 4), memory, k=k, temperature=0.5, grid=grid, chunk_size=chunk_size)
    assert torch.equal(i, torch.arange(k).expand(12, k))
    assert torch.allclose(w, torch.full((12, k), 1 / k))


def test_dtypes_non_contiguous_and_deterministic():
    grid, T, k = (4, 6), 3, 4
    query, memory = keys(24, 8), keys(T, 24, 8, seed=1)
    base_w, base_i = topk_affinity(query, memory, k=k, temperature=0.5, grid=grid, radius=2, chunk_size=5)
    # Non-contiguous views of the same values.
    q_nc = query.t().contiguous().t()
    m_nc = memory.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    assert not q_nc.is_contiguous() and not m_nc.is_contiguous()
    w, i = topk_affinity(q_nc, m_nc, k=k, temperature=0.5, grid=grid, radius=2, chunk_size=5)
    # Another memory layout may round the GEMM differently; the selection is the same.
    assert torch.equal(i, base_i) and torch.allclose(w, base_w, atol=1e-6, rtol=0)
    # Repeated calls give bit-identical results.
    w2, i2 = topk_affinity(query, memory, k=k, temperature=0.5, grid=grid, radius=2, chunk_size=5)
    assert torch.equal(i2, base_i) and torch.equal(w2, base_w)
    # float64 inputs are computed in float32: same answer; float16 runs too.
    w, i = topk_affinity(query.double(), memory.double(), k=k, temperature=0.5, grid=grid, radius=2, chunk_size=5)
    assert torch.equal(i, base_i) and w.dtype == torch.float32
    w, i = topk_affinity(query.half(), memory.half(), k=k, temperature=0.5, grid=grid, radius=2)
    assert w.dtype == torch.float32 and torch.allclose(w.sum(1), torch.ones(24))


# --------------------------------------------------------------------------------------------
# readout


@pytest.mark.parametrize("objects", [1, 2, 3])
@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_readout_matches_brute_force(objects, chunk_size):
    P, k, M, Cv = 10, 4, 30, 5
    g = torch.Generator().manual_seed(objects)
    weights = torch.rand(P, k, generator=g)
    indices = torch.randint(0, M, (P, k), generator=g)
    indices[::3, -1] = -1  # empty slots, with a nonzero weight that must be ignored
    memory = torch.randn(M, objects * Cv, generator=g, dtype=torch.float64).float()
    out = readout(weights, indices, memory, chunk_size=chunk_size)
    assert out.shape == (P, objects * Cv) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), brute_readout(weights, indices, memory), atol=1e-6, rtol=0)
    # Other float dtypes and non-contiguous memory.
    out64 = readout(weights, indices, memory.double().t().contiguous().t(), chunk_size=chunk_size)
    np.testing.assert_allclose(out64.numpy(), out.numpy(), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# Peak memory: measured on every tensor the call allocates, freed when its storage dies.


class PeakBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages allocated by ops run inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views, in-place and out= ops return aliases of storages that already exist.
        if not any(r.alias_info is not None for r in func._schema.returns):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, storage.nbytes())
        return out


def peak_bytes(fn, *args, **kwargs) -> int:
    with PeakBytes() as mode:
        result = fn(*args, **kwargs)
    del result
    return mode.peak


def test_peak_memory_does_not_grow_with_memory_frames():
    grid, C, k, chunk = (8, 10), 8, 5, 32
    P = grid[0] * grid[1]
    query = keys(P, C)
    peaks = {}
    for T in (2, 20):
        memory = keys(T, P, C, seed=T)
        pinned = torch.arange(T) == 0
        peaks["chunked", T] = peak_bytes(
            topk_affinity, query, memory, k=k, temperature=0.5, grid=grid, chunk_size=chunk
        )
        peaks["local", T] = peak_bytes(
            topk_affinity, query, memory, k=k, temperature=0.5, grid=grid, pinned=pinned, radius=2, chunk_size=chunk
        )
        peaks["dense", T] = peak_bytes(dense_topk_affinity, query, memory, k=k, temperature=0.5, grid=grid)
    score_matrix_20 = P * 20 * P * 4
    for name in ("chunked", "local"):
        assert peaks[name, 2] > 0
        assert peaks[name, 20] <= peaks[name, 2] + 1024, peaks
        assert peaks[name, 20] < score_matrix_20 / 10, peaks
    # The measurement sees the dense baseline's P x T*P matrix.
    assert peaks["dense", 20] >= peaks["dense", 2] + P * 18 * P * 4, peaks


# --------------------------------------------------------------------------------------------
# Usage errors


def _affinity_call(**over):
    args = dict(query=keys(6, 4), memory=keys(2, 6, 4), k=3, temperature=0.5, grid=(2, 3))
    args.update(over)
    return args


BAD_AFFINITY = {
    "query ndim": dict(query=keys(6, 4)[None]),
    "memory ndim": dict(memory=keys(12, 4)),
    "channels": dict(memory=keys(2, 6, 5)),
    "positions": dict(memory=keys(2, 7, 4)),
    "grid product": dict(grid=(3, 3)),
    "grid type": dict(grid=(6,)),
    "int dtype": dict(query=torch.ones(6, 4, dtype=torch.int64)),
    "int memory": dict(memory=torch.ones(2, 6, 4, dtype=torch.int32)),
    "k zero": dict(k=0),
    "k too big": dict(k=13),
    "k float": dict(k=2.0),
    "no frames": dict(memory=torch.zeros(0, 6, 4)),
    "temperature zero": dict(temperature=0.0),
    "temperature negative": dict(temperature=-1.0),
    "radius negative": dict(radius=-1),
    "pinned length": dict(pinned=torch.ones(3, dtype=torch.bool)),
    "pinned dtype": dict(pinned=torch.ones(2)),
    "nan": dict(memory=torch.full((2, 6, 4), float("nan"))),
    "overflow": dict(temperature=1e-45),  # finite inputs, scores overflow float32
}


@pytest.mark.parametrize("fn", [topk_affinity, dense_topk_affinity])
@pytest.mark.parametrize("case", list(BAD_AFFINITY))
def test_affinity_usage_errors(fn, case):
    args = _affinity_call(**BAD_AFFINITY[case])
    with pytest.raises(UsageError):
        fn(args.pop("query"), args.pop("memory"), **args)


def test_affinity_device_and_chunk_errors():
    args = _affinity_call()
    q, m = args.pop("query"), args.pop("memory")
    with pytest.raises(UsageError, match="device"):
        topk_affinity(q.to("meta"), m, **args)
    with pytest.raises(UsageError, match="chunk_size"):
        topk_affinity(q, m, chunk_size=0, **args)


def test_readout_usage_errors():
    w, i, m = torch.rand(4, 2), torch.zeros(4, 2, dtype=torch.int64), torch.rand(5, 3)
    bad = [
        (w[0], i, m),  # ndim
        (w, i[:, :1], m),  # shape mismatch
        (w, i.int(), m),  # index dtype
        (w.long(), i, m),  # weight dtype
        (w, i, m.long()),  # memory dtype
        (w, i.fill_(5), m),  # out of range high
        (w, torch.full((4, 2), -2), m),  # out of range low
        (w, torch.zeros(4, 2, dtype=torch.int64), m.to("meta")),  # device
    ]
    for args in bad:
        with pytest.raises(UsageError):
            readout(*args)
    # All slots empty over an empty memory: nothing to read, not an error.
    out = readout(w, torch.full((4, 2), -1), torch.rand(0, 3))
    assert torch.equal(out, torch.zeros(4, 3))


def test_grid_iteration_covers_all_small_cases():
    # Exhaustive over tiny grids, every radius and pinned pattern for T = 2, vs the dense path.
    grids, radii, flag_sets = [(1, 1), (1, 4), (4, 1), (2, 3)], [None, 0, 1, 2], [(0, 0), (1, 0), (0, 1)]
    for (h, w), radius, flags in itertools.product(grids, radii, flag_sets):
        P = h * w
        query, memory = keys(P, 3, seed=P), keys(2, P, 3, seed=P + 1)
        pinned = torch.tensor(flags, dtype=torch.bool)
        k = min(3, 2 * P)
        args = dict(k=k, temperature=1.0, grid=(h, w), pinned=pinned, radius=radius)
        w_, i_ = topk_affinity(query, memory, chunk_size=2, **args)
        want_w, want_i = brute_topk(query, memory, **args)
        np.testing.assert_array_equal(i_.numpy(), want_i)
        np.testing.assert_allclose(w_.numpy(), want_w, atol=1e-6, rtol=0)
