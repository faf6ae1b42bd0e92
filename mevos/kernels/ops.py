"""The propagation ops the runtime calls, behind one switch: `impl`.

    topk_affinity(query, memory, k=..., ..., impl="auto")
    readout(weights, indices, memory, impl="auto")

impl (AffinityConfig.impl, passed down by the memory bank):
- "reference": `mevos.kernels.reference`, the chunked PyTorch oracle; runs everywhere.
- "dense": the brute-force baseline (the full P x T*P score matrix: the paper code's path).
- "fused": the fused kernels for the tensors' device (`_fused_op`; CUDA: `mevos.kernels.fused`;
  CPU: `mevos.kernels.cpu`, a C++ operator built with the system compiler on first use, which runs
  the reference itself, after one warning, where it cannot be built).
  Asking for them where there are none for the device is a UsageError.
- "auto": "fused" where the device has fused kernels, else "reference". MEVOS_FORCE_REFERENCE=1
  turns "auto" into "reference" (it never overrides an explicit choice).

A fused call the kernels cannot serve falls back to the reference with a warning, once per reason:
cuda-core missing (`pip install 'mevos[gpu]'`), a compile, load or launch failure (then the kernels
stay off for the process), or a configuration outside the kernels' cover (k > 32, key dims not a
multiple of 16, mixed dtypes, ...). Bad arguments raise the same UsageError on every path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor

from mevos import env
from mevos.errors import MissingExtraError, UsageError
from mevos.kernels import reference

__all__ = ["IMPLS", "check_impl", "resolve", "describe", "topk_affinity", "readout"]

#: The values of AffinityConfig.impl.
IMPLS = ("auto", "fused", "reference", "dense")

#: Device type ('cuda', 'cpu') -> why its fused implementation is off for the rest of the process
#: (a load or launch failure). Per device type: a CUDA failure leaves the CPU operator on.
_disabled: dict[str, str] = {}
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message + "; using the PyTorch reference", RuntimeWarning, stacklevel=4)


def check_impl(impl: str) -> str:
    """impl itself, or UsageError naming the choices."""
    if impl not in IMPLS:
        raise UsageError(f"affinity implementation {impl!r}: choose one of {', '.join(IMPLS)}")
    return impl


def _fused_op(op: str, tensors: tuple[Any, ...]) -> Callable[..., Any] | None:
    """The fused implementation of `op` ('topk_affinity' or 'readout') for these tensors' device,
    or None where the device has none. Its signature is the reference's."""
    if all(isinstance(t, Tensor) and t.is_cuda for t in tensors):
        from mevos.kernels import fused

        return getattr(fused, op)  # type: ignore[no-any-return]
    if all(isinstance(t, Tensor) and t.device.type == "cpu" for t in tensors):
        from mevos.kernels import cpu

        return getattr(cpu, op)  # type: ignore[no-any-return]
    return None


def _device_type(tensors: tuple[Any, ...]) -> str:
    """'cuda', 'cpu', ...: the first tensor's device type (the key of _disabled)."""
    for t in tensors:
        if isinstance(t, Tensor):
            return "cuda" if t.is_cuda else t.device.type
    return "cpu"


def resolve(impl: str, *tensors: Any, op: str = "topk_affinity") -> str:
    """What `impl` means for these tensors: 'fused', 'reference' or 'dense' (before any fallback
    a call may still make; see describe)."""
    check_impl(impl)
    if impl == "auto":
        usable = _device_type(tensors) not in _disabled and not env.flag("MEVOS_FORCE_REFERENCE")
        return "fused" if usable and _fused_op(op, tensors) is not None else "reference"
    if impl == "fused" and _fused_op(op, tensors) is None:
        devices = sorted({str(t.device) for t in tensors if isinstance(t, Tensor)})
        raise UsageError(f"affinity implementation 'fused': no fused kernels for tensors on {', '.join(devices)}; "
                         "use 'auto' or 'reference'")
    return impl


def describe(impl: str, query: Tensor, memory: Tensor, k: int) -> str:
    """Which top-k code runs for this call: 'dense reference', 'fused CUDA kernel' or 'chunked
    reference', with the reason when a fused call would fall back."""
    chosen = resolve(impl, query, memory)
    if chosen == "dense":
        return "dense reference"
    if chosen == "reference":
        return "chunked reference"
    if query.is_cuda:
        from mevos.kernels import fused

        why = fused.topk_unsupported(query, memory, k)  # (the radius limit needs > 128 frames)
        return "fused CUDA kernel" if why is None else f"chunked reference ({why})"
    from mevos.kernels import cpu

    return "compiled CPU operator" if cpu.available() else f"chunked reference ({cpu.reason()})"


def _call_fused(fn: Callable[..., Any], fallback: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
    from mevos.kernels import fused, nvrtc

    device = _device_type(args)
    if device in _disabled:  # an earlier load or launch failure on this device type: the kernels stay off
        return fallback()
    try:
        return fn(*args, **kwargs)
    except fused.Unsupported as exc:
        _warn_once(str(exc))
    except (MissingExtraError, nvrtc.KernelUnavailable) as exc:
        _disabled[device] = str(exc)
        _warn_once(f"fused CUDA kernels unavailable: {exc}")
    return fallback()


def topk_affinity(
    query: Tensor,
    memory: Tensor,
    *,
    k: int,
    temperature: float,
    grid: tuple[int, int],
    pinned: Tensor | None = None,
    radius: int | None = None,
    chunk_size: int = 1024,
    impl: str = "auto",
    error_flag: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """See mevos.kernels.reference.topk_affinity (the contract): query P x C, memory T x P x C ->
    (weights P x k float32, indices P x k int64); `impl` picks the code (module docstring).
    error_flag: for the fused kernels, an int32 device flag to OR errors into instead of waiting
    for the device (mevos.kernels.fused); the other paths raise at once and ignore it."""
    chosen = resolve(impl, query, memory)
    kw = dict(k=k, temperature=temperature, grid=grid, pinned=pinned, radius=radius)
    if chosen == "dense":
        return reference.dense_topk_affinity(query, memory, **kw)  # type: ignore[arg-type]

    def ref() -> tuple[Tensor, Tensor]:
        return reference.topk_affinity(query, memory, chunk_size=chunk_size, **kw)  # type: ignore[arg-type]

    if chosen == "fused":
        fn = _fused_op("topk_affinity", (query, memory))
        assert fn is not None
        flag = {} if error_flag is None else {"error_flag": error_flag}
        return _call_fused(fn, ref, query, memory, chunk_size=chunk_size, **kw, **flag)  # type: ignore[no-any-return]
    return ref()


def readout(weights: Tensor, indices: Tensor, memory: Tensor, *, chunk_size: int = 1024,
            impl: str = "auto", error_flag: Tensor | None = None) -> Tensor:
    """See mevos.kernels.reference.readout (the contract): weights, indices P x k, memory M x C ->
    P x C float32. 'dense' reads every query at once (one chunk), as the baseline does."""
    chosen = resolve(impl, weights, indices, memory, op="readout")
    if chosen == "dense":
        return reference.readout(weights, indices, memory, chunk_size=max(1, weights.shape[0]))

    def ref() -> Tensor:
        return reference.readout(weights, indices, memory, chunk_size=chunk_size)

    if chosen == "fused":
        fn = _fused_op("readout", (weights, indices, memory))
        assert fn is not None
        flag = {} if error_flag is None else {"error_flag": error_flag}
        return _call_fused(fn, ref, weights, indices, memory, chunk_size=chunk_size, **flag)  # type: ignore[no-any-return]
    return ref()
