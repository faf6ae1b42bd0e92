"""The fused CUDA ops: the signatures and results of mevos.kernels.reference, for CUDA tensors.

Arguments are validated exactly as the reference validates them (same UsageError messages);
configurations the kernels do not cover raise Unsupported, on which mevos.kernels.ops falls
back to the reference. Covered: fp16/bf16/fp32 keys (query and memory of one dtype) with C a
multiple of 16 up to 256, k <= 32, fewer than 2**31 memory positions; readout of fp16/bf16/fp32
memory. Non-contiguous or misaligned inputs are copied first (a defined result, never a wrong
one). Each op reads one device flag back at the end (one host sync, as the reference does) to
raise on NaN/inf scores or out-of-range indices instead of returning garbage, unless the caller
passes its own `error_flag` (an int32 CUDA tensor the kernels OR into): then nothing waits for the
device and the caller reads the flag once, when it next synchronises (the fast tracker: once per
frame, with the frame's labels). Launch plans (grid, splits, occupancy) are cached per shape;
the pinned-frame flags are a kernel argument, so a call uploads nothing.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from mevos.errors import MevosError, UsageError
from mevos.kernels import nvrtc
from mevos.kernels.reference import _check_affinity_args, _check_chunk_size, check_readout_args

__all__ = ["Unsupported", "MAX_K", "MAX_FLAGGED_FRAMES", "NONFINITE", "topk_affinity", "readout", "error_message"]

MAX_K = 32  # one warp holds a query's top-k list, one slot per lane
MAX_KEY_DIM = 256
MAX_FLAGGED_FRAMES = 128  # the pinned flags are a 128-bit kernel argument
_DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
# Must match topk_affinity.cu: query block = WARPS grid rows x QW columns; 128 threads.
_QUERY_ROWS, _QUERY_COLS, _THREADS = 4, 16, 128
_INT32_LIMIT = 2**31 - 2**20  # headroom for index arithmetic on cells just past the grid edge
_NONFINITE = "affinity scores are not finite: query or memory holds NaN/inf, or values too large for the temperature"
NONFINITE = _NONFINITE


def error_message(what: str = "") -> str:
    """The error an `error_flag` set by the kernels stands for (non-finite scores or readout
    indices out of range; the flag does not say which)."""
    return (f"the fused kernels flagged an error{what}: {_NONFINITE}; or readout indices out of range")


class Unsupported(MevosError):
    """A valid call the fused kernels do not cover; the message says why (the reference can)."""


def _device_index(t: Tensor) -> int:
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def _aligned(t: Tensor) -> Tensor:
    """Contiguous and 16-byte aligned (cp.async and vector loads need it); copies only if not."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _tile_cells(key_dim: int, dtype: torch.dtype) -> int:
    """BN of topk_affinity.cu for these keys (the memory tile's cell count)."""
    pad, size = (4, 4) if dtype == torch.float32 else (8, 2)
    row = (key_dim + pad) * size
    return 64 if 64 * row <= 24 * 1024 else 32 if 32 * row <= 24 * 1024 else 16


def _num_splits(query_blocks: int, tiles: int, resident: int) -> int:
    """How many CTAs share one query block's search. Enough CTAs to fill every SM (`resident`
    CTAs run at once) with little idle time in the last wave, each split keeping at least 8 memory
    tiles, at most 64 (the merge reads splits x k candidates per query)."""
    limit = max(1, min(64, tiles // 8))
    best, best_eff = 1, 0.0
    for s in range(1, limit + 1):
        ctas = query_blocks * s
        waves = math.ceil(ctas / resident)
        eff = ctas / (waves * resident)  # busy fraction of the CTA slots over all waves
        if eff > best_eff + 1e-9:
            best, best_eff = s, eff
        if ctas >= resident and eff >= 0.9:
            return s
    return best


def _resident_ctas(kernel: object, device_index: int) -> int:
    """CTAs of the partial kernel that run at once on the whole GPU (occupancy x SMs)."""
    sms = torch.cuda.get_device_properties(device_index).multi_processor_count
    try:
        per_sm = int(kernel.occupancy.max_active_blocks_per_multiprocessor(_THREADS, 0))  # type: ignore[attr-defined]
    except Exception:  # an older cuda.core: assume the register-bound figure of the sm_80/90 build
        per_sm = 3
    return max(1, per_sm) * sms


@functools.lru_cache(maxsize=256)
def _topk_plan(device_index: int, h: int, w: int, T: int, C: int, dtype: torch.dtype) -> tuple[int, int]:
    """(query blocks, splits) of a top-k launch, cached per device and shape (the occupancy
    query behind it costs driver calls)."""
    query_blocks = math.ceil(h / _QUERY_ROWS) * math.ceil(w / _QUERY_COLS)
    cells = _tile_cells(C, dtype)
    tiles = T * math.ceil(h / (cells // 16)) * math.ceil(w / 16)
    partial = nvrtc.get_kernel("topk_affinity.cu", "mevos_topk_partial", {"KEY_DIM": C, "KEY_TYPE": _DTYPE_CODE[dtype]},
                               device_index)
    return query_blocks, _num_splits(query_blocks, tiles, _resident_ctas(partial, device_index))


def _pinned_mask(flags: list[bool]) -> tuple[int, int]:
    """The pinned flags as the kernel's two 64-bit words (bit f = frame f)."""
    bits = sum(1 << f for f, pinned in enumerate(flags[:MAX_FLAGGED_FRAMES]) if pinned)
    return bits & (2**64 - 1), bits >> 64


def topk_unsupported(query: Tensor, memory: Tensor, k: int, radius: int | None = None) -> str | None:
    """Why the fused kernel cannot serve this (validated) call, or None when it can."""
    if radius is not None and memory.shape[0] > MAX_FLAGGED_FRAMES:
        return f"more than {MAX_FLAGGED_FRAMES} memory frames with a locality radius"
    if not (query.is_cuda and memory.is_cuda):
        return "the tensors are not on a CUDA device"
    if query.dtype != memory.dtype:
        return f"query is {query.dtype} but memory is {memory.dtype} (cast both to one dtype)"
    if query.dtype not in _DTYPE_CODE:
        return f"keys of dtype {query.dtype} (supported: float16, bfloat16, float32)"
    c = query.shape[-1]
    if c % 16 or not 16 <= c <= MAX_KEY_DIM:
        return f"key dimension {c} (supported: a multiple of 16 up to {MAX_KEY_DIM})"
    if k > MAX_K:
        return f"k = {k} (supported: k <= {MAX_K})"
    if memory.shape[0] * memory.shape[1] >= _INT32_LIMIT:
        return "more than 2**31 memory positions"
    return None


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
    error_flag: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """mevos.kernels.reference.topk_affinity on the GPU (chunk_size is validated, then unused).

    query: P x C, memory: T x P x C, CUDA, fp16/bf16/fp32. Returns (weights P x k float32,
    indices P x k int64). Extra memory: splits x P x k partial lists (a few MB), nothing of
    size P x T*P. Raises UsageError like the reference, Unsupported outside the kernel's cover.
    error_flag: int32 CUDA tensor (1,) the kernels OR an error into instead of this call reading
    its own flag (no host synchronisation: the caller reads it; see error_message).
    """
    flags = _check_affinity_args(query, memory, k, temperature, grid, pinned, radius)
    _check_chunk_size(chunk_size)
    why = topk_unsupported(query, memory, k, radius)
    if why:
        raise Unsupported(f"fused top-k affinity does not support {why}")
    h, w = grid
    T, P, C = memory.shape
    if radius is not None and radius >= max(h, w) - 1:
        radius = None  # the window covers the grid: no limit (as the reference does)
    device = query.device
    index = _device_index(query)
    q, m = _aligned(query), _aligned(memory)
    pinned_lo, pinned_hi = _pinned_mask(flags)

    defines = {"KEY_DIM": C, "KEY_TYPE": _DTYPE_CODE[q.dtype]}
    with torch.cuda.device(index):
        partial = nvrtc.get_kernel("topk_affinity.cu", "mevos_topk_partial", defines, index)
        merge = nvrtc.get_kernel("topk_affinity.cu", "mevos_topk_merge", defines, index)
        query_blocks, splits = _topk_plan(index, h, w, T, C, q.dtype)
    part_s = torch.empty(splits, P, k, dtype=torch.float32, device=device)
    part_i = torch.empty(splits, P, k, dtype=torch.int32, device=device)
    weights = torch.empty(P, k, dtype=torch.float32, device=device)
    indices = torch.empty(P, k, dtype=torch.int64, device=device)
    flag = error_flag if error_flag is not None else torch.zeros(1, dtype=torch.int32, device=device)

    with torch.cuda.device(index):
        nvrtc.launch(
            partial, index, (query_blocks, splits, 1), _THREADS,
            q.data_ptr(), m.data_ptr(), np.uint64(pinned_lo), np.uint64(pinned_hi), part_s.data_ptr(),
            part_i.data_ptr(), flag.data_ptr(),
            np.int32(h), np.int32(w), np.int32(T), np.int32(k), np.int32(-1 if radius is None else radius),
        )  # fmt: skip
        warps = _THREADS // 32
        nvrtc.launch(
            merge, index, (math.ceil(P / warps), 1, 1), _THREADS,
            part_s.data_ptr(), part_i.data_ptr(), weights.data_ptr(), indices.data_ptr(), flag.data_ptr(),
            np.int32(P), np.int32(splits), np.int32(k), np.float32(temperature),
        )  # fmt: skip
    if error_flag is None and bool(flag.item()):
        raise UsageError(_NONFINITE)
    return weights, indices


def readout_unsupported(memory: Tensor, weights: Tensor) -> str | None:
    """Why the fused readout cannot serve this (validated) call, or None when it can."""
    if not memory.is_cuda:
        return "the tensors are not on a CUDA device"
    if memory.dtype not in _DTYPE_CODE:
        return f"memory of dtype {memory.dtype} (supported: float16, bfloat16, float32)"
    if max(weights.shape[0], weights.shape[1], memory.shape[1]) >= 2**31:
        return "dimensions of 2**31 or more"
    return None


def readout(weights: Tensor, indices: Tensor, memory: Tensor, *, chunk_size: int = 1024,
            error_flag: Tensor | None = None) -> Tensor:
    """mevos.kernels.reference.readout on the GPU: weights P x k (float), indices P x k int64
    (-1 = empty), memory M x C (fp16/bf16/fp32) -> P x C float32. chunk_size: validated, unused.
    error_flag: as topk_affinity's (an out-of-range index sets it; nothing waits for the device)."""
    check_readout_args(weights, indices, memory, chunk_size)
    why = readout_unsupported(memory, weights)
    if why:
        raise Unsupported(f"fused readout does not support {why}")
    P, k = weights.shape
    M, C = memory.shape
    device = memory.device
    if P == 0 or C == 0 or k == 0:
        return torch.zeros(P, C, dtype=torch.float32, device=device)
    index = _device_index(memory)
    wts = weights.to(torch.float32).contiguous()
    idx = indices.contiguous()
    mem = _aligned(memory)
    out = torch.empty(P, C, dtype=torch.float32, device=device)
    flag = error_flag if error_flag is not None else torch.zeros(1, dtype=torch.int32, device=device)
    with torch.cuda.device(index):
        kernel = nvrtc.get_kernel("readout.cu", "mevos_readout", {"VALUE_TYPE": _DTYPE_CODE[mem.dtype]}, index)
        nvrtc.launch(
            kernel, index, (math.ceil(P / 4), 1, 1), 128,
            wts.data_ptr(), idx.data_ptr(), mem.data_ptr(), out.data_ptr(), flag.data_ptr(),
            np.int32(P), np.int32(k), np.int64(M), np.int32(C),
        )  # fmt: skip
    if error_flag is None and bool(flag.item()):
        raise UsageError(f"indices must lie in [-1, {M - 1}] for a memory of {M} rows")
    return out
