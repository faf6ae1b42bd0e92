"""The dispatch around the fused kernels, on CPU: which path runs, fallbacks, shared validation,
and that nothing CUDA is imported until a CUDA tensor asks for it."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from mevos.errors import MissingExtraError, UsageError
from mevos.kernels import cpu, fused, nvrtc, ops, reference


def _keys(T=3, h=5, w=7, C=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(h * w, C, generator=g), dim=1)
    m = torch.nn.functional.normalize(torch.randn(T, h * w, C, generator=g), dim=1)
    return q, m, (h, w)


@pytest.fixture(autouse=True)
def _fresh_dispatch_state(monkeypatch):
    monkeypatch.setattr(ops, "_disabled", {})
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.delenv("MEVOS_FORCE_REFERENCE", raising=False)


def test_cpu_tensors_use_the_cpu_operator_or_the_forced_reference(monkeypatch):
    q, m, grid = _keys()
    assert ops.resolve("auto", q, m) == "fused"  # the compiled CPU operator (or its own fallback)
    args = dict(k=4, temperature=0.05, grid=grid, radius=1, pinned=torch.tensor([True, False, False]))
    calls = []
    real = cpu.topk_affinity
    monkeypatch.setattr(cpu, "topk_affinity", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = ops.topk_affinity(q, m, **args)
    want = reference.topk_affinity(q, m, **args)
    assert calls == [1]
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], atol=1e-5, rtol=0)
    monkeypatch.setenv("MEVOS_FORCE_REFERENCE", "1")
    assert ops.resolve("auto", q, m) == "reference"
    forced = ops.topk_affinity(q, m, **args)
    assert calls == [1] and torch.equal(forced[0], want[0]) and torch.equal(forced[1], want[1])
    vals = torch.randn(m.shape[0] * m.shape[1], 8)
    assert torch.equal(ops.readout(*want, vals), reference.readout(*want, vals))


def test_impl_selects_the_code():
    q, m, grid = _keys()
    kw = dict(k=4, temperature=0.05, grid=grid, radius=1, pinned=torch.tensor([True, False, False]))
    dense = ops.topk_affinity(q, m, impl="dense", **kw)
    want = reference.dense_topk_affinity(q, m, **kw)
    assert torch.equal(dense[1], want[1]) and torch.equal(dense[0], want[0])
    assert torch.equal(ops.topk_affinity(q, m, impl="reference", **kw)[1], want[1])
    fused_cpu = ops.topk_affinity(q, m, impl="fused", **kw)  # the CPU operator
    assert torch.equal(fused_cpu[1], want[1]) and torch.allclose(fused_cpu[0], want[0], atol=1e-5, rtol=0)
    with pytest.raises(UsageError, match="no fused kernels for tensors on meta"):
        ops.resolve("fused", q.to("meta"), m.to("meta"))
    with pytest.raises(UsageError, match="choose one of"):
        ops.topk_affinity(q, m, impl="cuda", **kw)
    assert ops.describe("dense", q, m, 4) == "dense reference"
    assert ops.describe("reference", q, m, 4) == "chunked reference"
    assert ops.describe("auto", q, m, 4) == (
        "compiled CPU operator" if cpu.available() else f"chunked reference ({cpu.reason()})")


def test_force_reference_flag_only_overrides_auto(monkeypatch):
    class FakeCuda:
        is_cuda = True

    monkeypatch.setattr(ops, "Tensor", FakeCuda)
    assert ops.resolve("auto", FakeCuda(), FakeCuda()) == "fused"
    monkeypatch.setenv("MEVOS_FORCE_REFERENCE", "1")
    assert ops.resolve("auto", FakeCuda(), FakeCuda()) == "reference"
    assert ops.resolve("fused", FakeCuda(), FakeCuda()) == "fused"
    assert ops.resolve("dense", FakeCuda(), FakeCuda()) == "dense"


@pytest.mark.parametrize(
    "error",
    [MissingExtraError("cuda-core", "gpu", "the fused CUDA kernels"), nvrtc.KernelUnavailable("NVRTC failed")],
    ids=["missing-extra", "compile-failure"],
)
def test_an_unavailable_kernel_warns_once_falls_back_and_stays_off(monkeypatch, error):
    q, m, grid = _keys()
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise error

    monkeypatch.setattr(ops, "_fused_op", lambda op, tensors: broken)
    with pytest.warns(RuntimeWarning, match="using the PyTorch reference"):
        got = ops.topk_affinity(q, m, k=3, temperature=0.1, grid=grid, impl="fused")
    want = reference.topk_affinity(q, m, k=3, temperature=0.1, grid=grid)
    assert torch.equal(got[1], want[1])
    assert ops.resolve("auto", q, m) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.topk_affinity(q, m, k=3, temperature=0.1, grid=grid, impl="fused")  # no second warning, no retry
    assert calls == [1]


def test_a_cuda_failure_leaves_the_cpu_operator_on(monkeypatch):
    # The kernels are switched off per device type: after a CUDA load or launch failure, CPU
    # tensors still get the compiled CPU operator under 'auto'.
    q, m, grid = _keys()
    monkeypatch.setitem(ops._disabled, "cuda", "NVRTC failed")
    assert ops.resolve("auto", q, m) == "fused"
    monkeypatch.setitem(ops._disabled, "cpu", "a failure on the CPU")
    assert ops.resolve("auto", q, m) == "reference"


def test_an_unsupported_configuration_falls_back_with_one_warning_per_reason(monkeypatch):
    q, m, grid = _keys()
    monkeypatch.setattr(ops, "_fused_op", lambda op, tensors: getattr(fused, op))
    # Valid CPU tensors reach the support check and are refused there: the reference answers.
    with pytest.warns(RuntimeWarning, match="not on a CUDA device"):
        got = ops.topk_affinity(q, m, k=3, temperature=0.1, grid=grid)
    assert torch.equal(got[1], reference.topk_affinity(q, m, k=3, temperature=0.1, grid=grid)[1])
    with pytest.warns(RuntimeWarning, match="fused readout does not support"):
        ops.readout(*got, torch.randn(m.shape[0] * m.shape[1], 4))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(k=0), "k must be an int >= 1"),
        (dict(k=10_000), "larger than the memory"),
        (dict(temperature=0.0), "temperature must be a number > 0"),
        (dict(grid=(4, 7)), "cells but query has"),
        (dict(radius=-1), "radius must be None or an int >= 0"),
        (dict(pinned=torch.tensor([True])), "pinned has 1 flags"),
        (dict(chunk_size=0), "chunk_size must be an int >= 1"),
        (dict(memory=torch.zeros(0, 35, 16)), "no frames"),
        (dict(memory=torch.zeros(3, 35, 8)), "channels"),
    ],
)
def test_fused_validates_exactly_like_the_reference(change, message):
    q, m, grid = _keys()
    args = dict(query=q, memory=m, k=3, temperature=0.1, grid=grid) | change
    with pytest.raises(UsageError, match=message) as ref_err:
        reference.topk_affinity(**args)
    with pytest.raises(UsageError) as fused_err:
        fused.topk_affinity(**args)
    assert str(fused_err.value) == str(ref_err.value)


@pytest.mark.parametrize(
    "weights, indices, memory, message",
    [
        (torch.ones(4, 2), torch.zeros(4, 2, dtype=torch.int32), torch.ones(9, 3), "indices must be int64"),
        (torch.ones(4, 2), torch.zeros(4, 3, dtype=torch.int64), torch.ones(9, 3), "differ in shape"),
        (torch.ones(4, 2), torch.zeros(4, 2, dtype=torch.int64), torch.ones(9), "readout needs"),
        (torch.ones(4, 2), torch.zeros(4, 2, dtype=torch.int64), torch.ones(9, 3, dtype=torch.int64), "floating"),
    ],
)
def test_fused_readout_validates_like_the_reference(weights, indices, memory, message):
    with pytest.raises(UsageError, match=message):
        reference.readout(weights, indices, memory)
    with pytest.raises(UsageError, match=message):
        fused.readout(weights, indices, memory)


def test_unsupported_reasons_name_the_limit():
    q, m, grid = _keys()
    assert "not on a CUDA device" in fused.topk_unsupported(q, m, 3)


def test_import_needs_no_cuda_python():
    """mevos, the ops and the fused module import with `cuda` unimportable; the compiler raises
    MissingExtraError naming the gpu extra only when asked for."""
    code = (
        "import sys; sys.modules['cuda'] = None\n"
        "import torch, mevos, mevos.kernels, mevos.kernels.ops as ops, mevos.kernels.fused\n"
        "from mevos.kernels import nvrtc\n"
        "from mevos.errors import MissingExtraError\n"
        "q = torch.randn(6, 16); m = torch.randn(2, 6, 16)\n"
        "ops.topk_affinity(q, m, k=2, temperature=0.1, grid=(2, 3))\n"
        "try:\n"
        "    nvrtc.compile_cubin('readout.cu', 'sm_90', {'VALUE_TYPE': 0}, use_cache=False)\n"
        "except MissingExtraError as e:\n"
        "    assert \"mevos[gpu]\" in str(e), e\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_launch_failure_is_one_kernel_unavailable(monkeypatch):
    """Whatever cuda.core raises while launching becomes KernelUnavailable naming the kernel (ops
    then turns the kernels off and answers with the reference: see the test above)."""
    import types

    class FakeKernel:
        name = "mevos_topk_partial"

    def failing_launch(*args):
        raise RuntimeError("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")

    fake = types.SimpleNamespace(
        Device=lambda i: types.SimpleNamespace(set_current=lambda: None), LEGACY_DEFAULT_STREAM=object(),
        Stream=types.SimpleNamespace(from_handle=lambda h: h), LaunchConfig=lambda **kw: kw, launch=failing_launch,
    )
    monkeypatch.setattr(nvrtc, "core", lambda: fake)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda index=None: types.SimpleNamespace(cuda_stream=0))
    with pytest.raises(nvrtc.KernelUnavailable, match="cannot launch mevos_topk_partial on cuda:0.*OUT_OF_RESOURCES"):
        nvrtc.launch(FakeKernel(), 0, (1, 1, 1), 128)


def test_pinned_flags_are_a_kernel_argument():
    assert fused._pinned_mask([True, False, True]) == (0b101, 0)
    flags = [False] * 130
    flags[0] = flags[64] = flags[127] = flags[129] = True  # frames past 128 are not representable
    assert fused._pinned_mask(flags) == (1, 1 | (1 << 63))
    q, m, _ = _keys(T=2)
    big = torch.zeros(fused.MAX_FLAGGED_FRAMES + 1, 1, 16)
    assert fused.topk_unsupported(q[:1], big, 3, radius=2) == "more than 128 memory frames with a locality radius"
    assert "not on a CUDA device" in fused.topk_unsupported(q[:1], big, 3, radius=None)
