"""The propagation ops the runtime calls: fused kernels where there are some, else the reference.

Dispatch, per call:
- CUDA tensors, MEVOS_FORCE_REFERENCE unset, kernels usable -> `mevos.kernels.fused`;
- CPU tensors, MEVOS_FORCE_REFERENCE unset -> `mevos.kernels.cpu` (the compiled CPU operators;
  they run the reference themselves, after one warning, when they cannot be built);
- everything else -> `mevos.kernels.reference` (the oracle, same signatures and results).
A CUDA call the kernels cannot serve falls back to the reference with a warning, once per reason:
cuda-core missing (`pip install 'mevos[gpu]'`), a compile or load failure (then the kernels stay
off for the process), or a configuration outside the kernels' cover (k > 32, key dims not a
multiple of 16, mixed dtypes, ...). Bad arguments raise the same UsageError on either path.
"""

from __future__ import annotations

import warnings

from torch import Tensor

from mevos import env
from mevos.errors import MissingExtraError
from mevos.kernels import reference

__all__ = ["topk_affinity", "readout", "fused_enabled"]

_disabled_reason: str | None = None
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message + "; using the PyTorch reference", RuntimeWarning, stacklevel=3)


def fused_enabled(*tensors: Tensor) -> bool:
    """Whether a call on these tensors tries the fused kernels: all on CUDA, not forced off, and
    no earlier compile/load failure in this process."""
    if _disabled_reason is not None or env.flag("MEVOS_FORCE_REFERENCE"):
        return False
    return all(isinstance(t, Tensor) and t.is_cuda for t in tensors)


def _cpu_enabled(*tensors: Tensor) -> bool:
    """Whether a call on these tensors goes to the compiled CPU operator: all on the CPU, not forced off."""
    if env.flag("MEVOS_FORCE_REFERENCE"):
        return False
    return all(isinstance(t, Tensor) and t.device.type == "cpu" for t in tensors)


def _disable(exc: Exception) -> None:
    global _disabled_reason
    _disabled_reason = str(exc)
    _warn_once(f"fused CUDA kernels unavailable: {exc}")


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
) -> tuple[Tensor, Tensor]:
    """See mevos.kernels.reference.topk_affinity (the contract); fused on CUDA and CPU tensors."""
    if _cpu_enabled(query, memory):
        from mevos.kernels import cpu

        return cpu.topk_affinity(
            query, memory, k=k, temperature=temperature, grid=grid, pinned=pinned, radius=radius, chunk_size=chunk_size
        )
    if fused_enabled(query, memory):
        from mevos.kernels import fused, nvrtc

        try:
            return fused.topk_affinity(
                query, memory, k=k, temperature=temperature, grid=grid, pinned=pinned, radius=radius, chunk_size=chunk_size
            )
        except fused.Unsupported as exc:
            _warn_once(str(exc))
        except (MissingExtraError, nvrtc.KernelUnavailable) as exc:
            _disable(exc)
    return reference.topk_affinity(
        query, memory, k=k, temperature=temperature, grid=grid, pinned=pinned, radius=radius, chunk_size=chunk_size
    )


def readout(weights: Tensor, indices: Tensor, memory: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """See mevos.kernels.reference.readout (the contract); fused on CUDA and CPU tensors."""
    if _cpu_enabled(weights, indices, memory):
        from mevos.kernels import cpu

        return cpu.readout(weights, indices, memory, chunk_size=chunk_size)
    if fused_enabled(weights, indices, memory):
        from mevos.kernels import fused, nvrtc

        try:
            return fused.readout(weights, indices, memory, chunk_size=chunk_size)
        except fused.Unsupported as exc:
            _warn_once(str(exc))
        except (MissingExtraError, nvrtc.KernelUnavailable) as exc:
            _disable(exc)
    return reference.readout(weights, indices, memory, chunk_size=chunk_size)
