"""Pure-PyTorch propagation ops: top-k affinity over the memory and readout.

This is the oracle the fused CUDA kernels must match, and the path that runs everywhere else.
Layout is position-major: a frame's feature grid has h x w cells, P = h*w positions in row-major
order; memory holds T frames of the same grid, flattened memory index m = t*P + p.

`topk_affinity` streams: queries in blocks of `chunk_size`, memory in blocks of at most
`chunk_size` positions of one frame, with a running top-k per query, so its extra memory is
O(chunk_size * (chunk_size + k)) whatever the number of memory frames. `dense_topk_affinity`
materialises the full P x T*P score matrix: the brute-force baseline.

Selection contract (shared with the kernels): candidates are ranked by score descending, ties
broken by the lower memory index; weights are the softmax over the k kept scores; slots without a
candidate (a locality window smaller than k) get index -1 and weight 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mevos.errors import UsageError

__all__ = [
    "topk_affinity",
    "dense_topk_affinity",
    "readout",
]

_NEG_INF = float("-inf")
_NONFINITE = "affinity scores are not finite: query or memory holds NaN/inf, or values too large for the temperature"


# --------------------------------------------------------------------------------------------
# Validation


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_affinity_args(
    query: Tensor,
    memory: Tensor,
    k: int,
    temperature: float,
    grid: tuple[int, int],
    pinned: Tensor | None,
    radius: int | None,
) -> list[bool]:
    """Raise UsageError for any argument topk_affinity cannot work with; return pinned as bools."""
    if not isinstance(query, Tensor) or not isinstance(memory, Tensor):
        raise UsageError("query and memory must be torch tensors")
    if query.ndim != 2:
        raise UsageError(f"query must be P x C (2-D), got shape {tuple(query.shape)}")
    if memory.ndim != 3:
        raise UsageError(f"memory must be T x P x C (3-D), got shape {tuple(memory.shape)}")
    for name, t in (("query", query), ("memory", memory)):
        if not t.dtype.is_floating_point:
            raise UsageError(f"{name} must have a floating dtype, got {t.dtype}")
    if query.device != memory.device:
        raise UsageError(f"query is on {query.device} but memory is on {memory.device}; move both to one device")
    P, C = query.shape
    T, Pm, Cm = memory.shape
    if Cm != C:
        raise UsageError(f"query has {C} channels but memory has {Cm}")
    if Pm != P:
        raise UsageError(f"query has {P} positions but memory frames have {Pm}")
    if T == 0:
        raise UsageError("memory has no frames (T = 0); propagation needs at least one memory frame")
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2 and all(_is_int(g) and g >= 1 for g in grid)):
        raise UsageError(f"grid must be (h, w) with positive ints, got {grid!r}")
    h, w = grid
    if h * w != P:
        raise UsageError(f"grid {h} x {w} has {h * w} cells but query has {P} positions")
    if not _is_int(k) or k < 1:
        raise UsageError(f"k must be an int >= 1, got {k!r}")
    if k > T * P:
        raise UsageError(f"k = {k} is larger than the memory ({T} frames x {P} positions = {T * P})")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise UsageError(f"temperature must be a number > 0, got {temperature!r}")
    if temperature == float("inf"):
        raise UsageError("temperature must be finite")
    if radius is not None and (not _is_int(radius) or radius < 0):
        raise UsageError(f"radius must be None or an int >= 0, got {radius!r}")
    if pinned is None:
        return [True] * T
    if not isinstance(pinned, Tensor) or pinned.dtype != torch.bool or pinned.ndim != 1:
        raise UsageError("pinned must be a 1-D torch.bool tensor (one flag per memory frame)")
    if pinned.numel() != T:
        raise UsageError(f"pinned has {pinned.numel()} flags but memory has {T} frames")
    # Control flow is per frame, so the flags are needed on the host anyway; any device is accepted.
    return [bool(f) for f in pinned.tolist()]


def _check_chunk_size(chunk_size: int) -> None:
    if not _is_int(chunk_size) or chunk_size < 1:
        raise UsageError(f"chunk_size must be an int >= 1, got {chunk_size!r}")


# --------------------------------------------------------------------------------------------
# Selection


def _topk_columns(scores: Tensor, k: int) -> Tensor:
    """Columns of the k best entries per row of scores (n x N), ranked by score descending and
    column ascending on ties; returned in ascending column order (n x min(k, N) int64).

    torch.topk leaves the choice among equal values unspecified, so it only decides rows whose
    k-th and (k+1)-th values differ (the kept set is then unique); rows with a finite tie at that
    boundary fall back to a stable sort. A tie at -inf needs no care: those slots hold masked
    candidates, and every -inf slot is emptied (index -1) at the end whichever column it came from.
    """
    n, N = scores.shape
    if N <= k:
        return torch.arange(N, device=scores.device).expand(n, N).clone()
    values, cols = scores.topk(k + 1, dim=1)
    kth, next_ = values[:, k - 1], values[:, k]
    tied = (kth == next_) & torch.isfinite(kth)
    cols = cols[:, :k]
    rows = tied.nonzero().squeeze(1)
    if rows.numel():
        order = scores[rows].sort(dim=1, descending=True, stable=True).indices[:, :k]
        cols = cols.index_put((rows,), order)
    return cols.sort(dim=1).values


def _finish(scores: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Kept scores and indices (n x k, indices ascending) -> (weights, indices) in the contract's
    order: score descending, lower index first on ties; empty (-inf) slots last with index -1."""
    empty = scores == _NEG_INF
    indices = indices.masked_fill(empty, -1)
    # Stable sort of index-ascending slots gives the lower index first among equal scores.
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    indices = indices.gather(1, order)
    # Every query has at least one candidate (its own cell in each frame), so no row is all -inf.
    weights = torch.softmax(scores, dim=1)
    return weights, indices


def _outside_window(q0: int, q1: int, p0: int, p1: int, w: int, radius: int, device: torch.device) -> Tensor:
    """Bool (q1-q0) x (p1-p0): memory cell p is outside the (2r+1) x (2r+1) square centred on
    query cell q. Built from 1-byte comparisons so no int64 (n x b) temporary is made."""
    q = torch.arange(q0, q1, device=device)
    p = torch.arange(p0, p1, device=device)
    qy, qx = (q // w).unsqueeze(1), (q % w).unsqueeze(1)
    py, px = p // w, p % w
    return (py < qy - radius) | (py > qy + radius) | (px < qx - radius) | (px > qx + radius)


# --------------------------------------------------------------------------------------------
# Affinity


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
    """Top-k affinity of each query position over the memory, streamed in chunks.

    query: P x C keys of the query frame; memory: T x P x C keys of T memory frames (same grid
    h x w, P = h*w). Any float dtype (computed in float32). pinned: bool T (True = searched in
    full); None = all pinned. radius: for non-pinned frames only memory cells with |dy| <= radius
    and |dx| <= radius of the query cell are candidates; None = no locality limit.
    Score = <q, m> / temperature (computed as <q / temperature, m>). Returns (weights P x k
    float32, indices P x k int64, flattened m = t*P + p): the k best candidates per query in
    descending score order (ties broken by the lower index), weights = softmax over those k
    scores. If a query has fewer than k candidates, the missing slots get weight 0 and index -1.
    Raises UsageError on unusable arguments or non-finite scores.
    """
    flags = _check_affinity_args(query, memory, k, temperature, grid, pinned, radius)
    _check_chunk_size(chunk_size)
    h, w = grid
    T, P, _ = memory.shape
    device = query.device
    # A window covering the whole grid is no limit; skip the masks.
    if radius is not None and radius >= max(h, w) - 1:
        radius = None

    out_w = torch.empty(P, k, dtype=torch.float32, device=device)
    out_i = torch.empty(P, k, dtype=torch.int64, device=device)
    # Accumulated on the device and read once at the end: one host sync per call.
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    for q0 in range(0, P, chunk_size):
        q1 = min(q0 + chunk_size, P)
        qc = query[q0:q1].float()
        nonfinite |= ~torch.isfinite(qc).all()
        # Scaling the chunk once instead of every score block saves a pass over each block.
        qc = qc / temperature
        # Running top-k, kept in ascending index order; starts as k empty slots (-inf, -1) so
        # that a first block smaller than k (or fully masked) merges like any other.
        run_s = torch.full((q1 - q0, k), _NEG_INF, device=device)
        run_i = torch.full((q1 - q0, k), -1, dtype=torch.int64, device=device)
        for t in range(T):
            r = None if flags[t] else radius
            if r is not None:
                # Only memory rows within the radius of the chunk's rows can be candidates.
                lo = max(0, q0 // w - r) * w
                hi = min(h, (q1 - 1) // w + r + 1) * w
            else:
                lo, hi = 0, P
            for p0 in range(lo, hi, chunk_size):
                p1 = min(p0 + chunk_size, hi)
                block = memory[t, p0:p1].float()
                nonfinite |= ~torch.isfinite(block).all()
                s = qc @ block.T
                if r is not None:
                    s.masked_fill_(_outside_window(q0, q1, p0, p1, w, r, device), _NEG_INF)
                # The block's own top-k first, so the merge below only touches 2k columns: any
                # candidate of the overall top-k is in the top-k of its block (same total order).
                cols = _topk_columns(s, k)
                blk_s, blk_i = s.gather(1, cols), cols + (t * P + p0)
                del s
                # Running slots (all lower indices) then the block's: the concatenation is in
                # index order, which the tie rule of _topk_columns relies on.
                cat_s, cat_i = torch.cat((run_s, blk_s), dim=1), torch.cat((run_i, blk_i), dim=1)
                cols = _topk_columns(cat_s, k)
                run_s, run_i = cat_s.gather(1, cols), cat_i.gather(1, cols)
        # Finite inputs can still overflow to inf (or inf - inf = NaN) for a tiny temperature;
        # topk ranks NaN and +inf first, so such scores always reach the kept slots.
        nonfinite |= (torch.isnan(run_s) | (run_s == float("inf"))).any()
        out_w[q0:q1], out_i[q0:q1] = _finish(run_s, run_i)
    if bool(nonfinite):
        raise UsageError(_NONFINITE)
    return out_w, out_i


def dense_topk_affinity(
    query: Tensor,
    memory: Tensor,
    *,
    k: int,
    temperature: float,
    grid: tuple[int, int],
    pinned: Tensor | None = None,
    radius: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Same contract as topk_affinity, computed the straightforward way: the full P x T*P score
    matrix, masked, then torch.topk. The brute-force baseline; its memory grows with T."""
    flags = _check_affinity_args(query, memory, k, temperature, grid, pinned, radius)
    w = grid[1]
    T, P, C = memory.shape
    scores = (query.float() / temperature) @ memory.reshape(T * P, C).float().T
    if not bool(torch.isfinite(scores).all()):
        raise UsageError(_NONFINITE)
    if radius is not None:
        outside = _outside_window(0, P, 0, P, w, radius, query.device)
        for t in range(T):
            if not flags[t]:
                scores[:, t * P : (t + 1) * P].masked_fill_(outside, _NEG_INF)
    cols = _topk_columns(scores, k)
    return _finish(scores.gather(1, cols), cols)


# --------------------------------------------------------------------------------------------
# Readout


def check_readout_args(weights: Tensor, indices: Tensor, memory: Tensor, chunk_size: int) -> None:
    """Types, shapes, dtypes and devices of readout's arguments (not the index range, which the
    reference checks on the host and the fused kernel on the device)."""
    if not all(isinstance(t, Tensor) for t in (weights, indices, memory)):
        raise UsageError("weights, indices and memory must be torch tensors")
    if weights.ndim != 2 or indices.ndim != 2 or memory.ndim != 2:
        raise UsageError(
            f"readout needs weights P x k, indices P x k and memory M x C, got shapes "
            f"{tuple(weights.shape)}, {tuple(indices.shape)}, {tuple(memory.shape)}"
        )
    if weights.shape != indices.shape:
        raise UsageError(f"weights {tuple(weights.shape)} and indices {tuple(indices.shape)} differ in shape")
    if not weights.dtype.is_floating_point or not memory.dtype.is_floating_point:
        raise UsageError(f"weights and memory must have floating dtypes, got {weights.dtype} and {memory.dtype}")
    if indices.dtype != torch.int64:
        raise UsageError(f"indices must be int64, got {indices.dtype}")
    if not (weights.device == indices.device == memory.device):
        devices = f"{weights.device}, {indices.device}, {memory.device}"
        raise UsageError(f"weights, indices and memory must be on one device, got {devices}")
    _check_chunk_size(chunk_size)


def readout(weights: Tensor, indices: Tensor, memory: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Weighted sum of memory rows.

    weights P x k, indices P x k (int64, -1 = empty slot, contributes nothing), memory M x C (any
    float dtype; M = T*P flattened memory positions; C = per-object values O*512 concatenated, or
    O masks). Returns P x C float32: out[p] = sum_j weights[p, j] * memory[indices[p, j]].
    Gathers chunk_size x k x C at a time.
    """
    check_readout_args(weights, indices, memory, chunk_size)
    P, k = weights.shape
    M, C = memory.shape
    if indices.numel() and (int(indices.min()) < -1 or int(indices.max()) >= M):
        raise UsageError(f"indices must lie in [-1, {M - 1}] for a memory of {M} rows")
    if M == 0:  # every index is -1 (checked above): nothing to read
        return torch.zeros(P, C, dtype=torch.float32, device=memory.device)
    out = torch.empty(P, C, dtype=torch.float32, device=memory.device)
    for q0 in range(0, P, chunk_size):
        q1 = min(q0 + chunk_size, P)
        idx = indices[q0:q1]
        empty = idx < 0
        # Empty slots gather row 0 (any valid row) and are zero-weighted: one gather, no branches.
        wts = weights[q0:q1].float().masked_fill(empty, 0.0)
        rows = memory.index_select(0, idx.masked_fill(empty, 0).reshape(-1)).float().view(q1 - q0, k, C)
        out[q0:q1] = torch.bmm(wts.unsqueeze(1), rows).squeeze(1)
    return out
