"""The compiled CPU affinity (mevos.kernels.cpu) against brute force, the dense computation and the
reference; and the same tests with the operator unavailable (a compiler that does not exist), where
the module must answer through the reference after one warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mevos.errors import UsageError
from mevos.kernels import cpu
from mevos.kernels.reference import dense_topk_affinity, topk_affinity
from mevos.kernels.reference import readout
from tests.kernels.test_reference import BAD_AFFINITY, PINNED, _affinity_call, brute_readout, brute_topk, keys

_BOGUS = "/nonexistent/mevos-test-c++"


@pytest.fixture(params=["compiled", "fallback"])
def mode(request, monkeypatch):
    """'compiled': the built operator (the test fails if it cannot be built: g++ is part of the
    install). 'fallback': MEVOS_CXX names a compiler that does not exist, so the operator is
    unavailable; the per-compiler cache of cpu._load keeps other tests' library untouched."""
    monkeypatch.setattr(cpu, "_warned", set())
    with warnings.catch_warnings():
        if request.param == "fallback":
            monkeypatch.setenv("MEVOS_CXX", _BOGUS)
            assert not cpu.available() and _BOGUS in cpu.reason()
            warnings.simplefilter("ignore", RuntimeWarning)  # the one warning has its own test
        else:
            monkeypatch.delenv("MEVOS_CXX", raising=False)
            if cpu._compiler() is None:
                pytest.skip("no C++ compiler on this machine: only the fallback can be tested")
            assert cpu.available(), cpu.reason()
        yield request.param


pytestmark = pytest.mark.usefixtures("two_torch_threads")  # tests/kernels/conftest.py


def _check(got, want_w, want_i, k, P):
    w, i = got
    assert w.dtype == torch.float32 and i.dtype == torch.int64
    assert w.shape == i.shape == (P, k)
    np.testing.assert_array_equal(i.numpy(), np.asarray(want_i))
    np.testing.assert_allclose(w.numpy(), np.asarray(want_w), atol=1e-5, rtol=0)


@pytest.mark.parametrize("radius", [None, 0, 1, 3])
@pytest.mark.parametrize("pinning", ["all", "none", "mixed"])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_matches_brute_force_and_dense(mode, k, pinning, radius):
    case = hash((k, pinning, radius)) & 0xFFFF
    grid = [(5, 7), (3, 11), (6, 4), (1, 19), (17, 3)][case % 5]  # odd sizes, rows narrower and wider than a block
    T = [1, 2, 5][case % 3]
    pinned = PINNED[pinning](T)
    P, C = grid[0] * grid[1], [8, 5, 64][case % 3]
    query, memory = keys(P, C, seed=case), keys(T, P, C, seed=case + 1)
    k = min(k, T * P)
    args = dict(k=k, temperature=0.7, grid=grid, pinned=pinned, radius=radius)
    got = cpu.topk_affinity(query, memory, **args)
    _check(got, *brute_topk(query, memory, **args), k, P)
    dense = dense_topk_affinity(query, memory, **args)
    _check(got, dense[0].numpy(), dense[1].numpy(), k, P)


@pytest.mark.parametrize("radius", [0, 1, 3, 12, None])
def test_matches_the_reference_on_a_wide_grid_with_several_objects_memory(mode, radius):
    # A grid wider than several 16-cell query blocks, the first frame pinned, T like the runtime's.
    grid, T, C, k = (9, 37), 6, 16, 10
    P = grid[0] * grid[1]
    query, memory = keys(P, C, seed=5), keys(T, P, C, seed=6)
    pinned = torch.tensor([True, False, False, True, False, False])  # an object added mid-stream
    args = dict(k=k, temperature=0.05, grid=grid, pinned=pinned, radius=radius)
    got = cpu.topk_affinity(query, memory, **args)
    want = topk_affinity(query, memory, **args)
    _check(got, want[0].numpy(), want[1].numpy(), k, P)


def test_k_larger_than_the_window_leaves_empty_slots(mode):
    grid, T, k = (4, 5), 2, 10
    query, memory = keys(20, 6), keys(T, 20, 6, seed=1)
    pinned = torch.zeros(T, dtype=torch.bool)
    args = dict(k=k, temperature=1.0, grid=grid, pinned=pinned, radius=1)
    w, i = cpu.topk_affinity(query, memory, **args)
    _check((w, i), *brute_topk(query, memory, **args), k, 20)
    # Corner cell 0: 2 x 2 window in each of 2 frames = 8 candidates, 2 empty slots.
    assert (i[0, 8:] == -1).all() and (w[0, 8:] == 0).all()
    assert torch.allclose(w.sum(1), torch.ones(20))


def test_ties_go_to_the_lower_index(mode):
    grid, k = (3, 4), 5
    query = keys(12, 4)
    frame = keys(12, 4, seed=3)
    memory = torch.stack([frame, frame, frame])  # every score appears three times
    for radius, pinned in [(None, None), (1, torch.tensor([False, True, False])), (0, torch.tensor([False] * 3))]:
        args = dict(k=k, temperature=0.5, grid=grid, pinned=pinned, radius=radius)
        got = cpu.topk_affinity(query, memory, **args)
        _check(got, *brute_topk(query, memory, **args), k, 12)
        assert torch.equal(got[1], dense_topk_affinity(query, memory, **args)[1])
    # All scores equal: the first k memory positions, uniform weights.
    w, i = cpu.topk_affinity(torch.zeros(12, 4), memory, k=k, temperature=0.5, grid=grid)
    assert torch.equal(i, torch.arange(k).expand(12, k))
    assert torch.allclose(w, torch.full((12, k), 1 / k))


def test_dtypes_non_contiguous_and_deterministic(mode):
    grid, T, k = (4, 6), 3, 4
    query, memory = keys(24, 8), keys(T, 24, 8, seed=1)
    base_w, base_i = cpu.topk_affinity(query, memory, k=k, temperature=0.5, grid=grid, radius=2)
    m_nc = memory.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    w, i = cpu.topk_affinity(query.t().contiguous().t(), m_nc, k=k, temperature=0.5, grid=grid, radius=2)
    assert torch.equal(i, base_i) and torch.allclose(w, base_w, atol=1e-6, rtol=0)
    w2, i2 = cpu.topk_affinity(query, memory, k=k, temperature=0.5, grid=grid, radius=2)
    assert torch.equal(i2, base_i) and torch.equal(w2, base_w)
    w, i = cpu.topk_affinity(query.double(), memory.half().double(), k=k, temperature=0.5, grid=grid, radius=2)
    assert w.dtype == torch.float32 and torch.allclose(w.sum(1), torch.ones(24))


@pytest.mark.parametrize("case", list(BAD_AFFINITY) + ["inf query", "nan outside every window but its own"])
def test_bad_input_raises_the_reference_error(mode, case):
    extra = {
        "inf query": dict(query=torch.full((6, 4), float("inf"))),
        "nan outside every window but its own": dict(
            memory=torch.cat([keys(1, 6, 4), keys(1, 6, 4, seed=2).index_put_((torch.tensor([0]), torch.tensor([5])),
                                                                               torch.tensor(float("nan")))]),
            pinned=torch.tensor([True, False]), radius=0),
    }
    args = _affinity_call(**(BAD_AFFINITY | extra)[case])
    q, m = args.pop("query"), args.pop("memory")
    with pytest.raises(UsageError) as want:
        topk_affinity(q, m, **args)
    with pytest.raises(UsageError) as got:
        cpu.topk_affinity(q, m, **args)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("objects", [1, 3])
def test_readout_matches_brute_force_and_the_reference(mode, objects):
    P, k, M, Cv = 37, 10, 90, 5
    g = torch.Generator().manual_seed(objects)
    weights = torch.rand(P, k, generator=g)
    indices = torch.randint(0, M, (P, k), generator=g)
    indices[::3, -2:] = -1  # empty slots, with a nonzero weight that must be ignored
    memory = torch.randn(M, objects * Cv, generator=g, dtype=torch.float64).float()
    out = cpu.readout(weights, indices, memory)
    assert out.shape == (P, objects * Cv) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), brute_readout(weights, indices, memory), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out.numpy(), readout(weights, indices, memory).numpy(), atol=1e-6, rtol=0)
    # Other float dtypes, non-contiguous inputs.
    out64 = cpu.readout(weights.double().t().contiguous().t(), indices, memory.double().t().contiguous().t())
    np.testing.assert_allclose(out64.numpy(), out.numpy(), atol=1e-6, rtol=0)
    # All slots empty over an empty memory: zeros, not an error.
    assert torch.equal(cpu.readout(weights, torch.full((P, k), -1), torch.rand(0, 3)), torch.zeros(P, 3))


@pytest.mark.parametrize("case", ["ndim", "shape", "index dtype", "weight dtype", "memory dtype", "high", "low", "chunk"])
def test_readout_bad_input_raises_the_reference_error(mode, case):
    w, i, m = torch.rand(4, 2), torch.zeros(4, 2, dtype=torch.int64), torch.rand(5, 3)
    args, kw = {
        "ndim": ((w[0], i, m), {}), "shape": ((w, i[:, :1], m), {}), "index dtype": ((w, i.int(), m), {}),
        "weight dtype": ((w.long(), i, m), {}), "memory dtype": ((w, i, m.long()), {}),
        "high": ((w, torch.full((4, 2), 5), m), {}), "low": ((w, torch.full((4, 2), -2), m), {}),
        "chunk": ((w, i, m), {"chunk_size": 0}),
    }[case]
    with pytest.raises(UsageError) as want:
        readout(*args, **kw)
    with pytest.raises(UsageError) as got:
        cpu.readout(*args, **kw)
    assert str(got.value) == str(want.value)


def test_non_cpu_tensors_and_bad_chunk_size_are_refused():
    args = _affinity_call()
    q, m = args.pop("query"), args.pop("memory")
    with pytest.raises(UsageError, match="CPU tensors"):
        cpu.topk_affinity(q.to("meta"), m.to("meta"), **args)
    with pytest.raises(UsageError, match="chunk_size"):
        cpu.topk_affinity(q, m, chunk_size=0, **args)


def test_an_unavailable_operator_warns_once_and_names_the_reason(monkeypatch):
    monkeypatch.setattr(cpu, "_warned", set())
    monkeypatch.setenv("MEVOS_CXX", _BOGUS)
    q, m = keys(12, 4), keys(2, 12, 4, seed=1)
    with pytest.warns(RuntimeWarning, match="compiled CPU affinity unavailable.*mevos-test-c"):
        got = cpu.topk_affinity(q, m, k=3, temperature=0.5, grid=(3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cpu.topk_affinity(q, m, k=3, temperature=0.5, grid=(3, 4))
    want = topk_affinity(q, m, k=3, temperature=0.5, grid=(3, 4))
    assert torch.equal(got[0], want[0]) and torch.equal(again[1], want[1])
    assert cpu.library_path() is None


def test_a_failing_build_is_unavailable_with_the_compiler_message(monkeypatch, tmp_path):
    # A "compiler" that runs but fails: its error text is the reason; nothing lands in the cache.
    fake = tmp_path / "fake-c++"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo fake 1.0; exit 0; }\necho 'no such luck' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MEVOS_CXX", str(fake))
    monkeypatch.setenv("MEVOS_CACHE_DIR", str(tmp_path / "cache"))
    assert not cpu.available()
    assert "no such luck" in cpu.reason()
    assert list((tmp_path / "cache" / "cpu").iterdir()) == []


def test_the_build_is_cached_and_keyed(monkeypatch, tmp_path):
    monkeypatch.delenv("MEVOS_CXX", raising=False)
    compiler = cpu._compiler()
    if compiler is None:
        pytest.skip("no C++ compiler on this machine")
    monkeypatch.setenv("MEVOS_CACHE_DIR", str(tmp_path))
    first = cpu._build(compiler)
    assert first.parent == tmp_path / "cpu" and first.name.startswith("topk_cpu-") and first.suffix == ".so"
    stamp = first.stat().st_mtime_ns
    assert cpu._build(compiler) == first and first.stat().st_mtime_ns == stamp  # found, not rebuilt
    assert [p.name for p in (tmp_path / "cpu").iterdir()] == [first.name]  # no temporary left
