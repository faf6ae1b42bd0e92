"""Pure-PyTorch propagation math: top-k affinity over the memory, readout, soft aggregation.

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

from collections.abc import Sequence

import torch
from torch import Tensor

from mevos.errors import UsageError

__all__ = [
    "topk_affinity",
    "dense_topk_affinity",
    "readout",
    "propagate",
    "soft_aggregate",
    "labels_from_probs",
    "channel_argmax",
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


def propagate(
    query: Tensor,
    memory_keys: Tensor,
    memory_values: Tensor,
    memory_masks: Tensor,
    *,
    k: int,
    temperature: float,
    grid: tuple[int, int],
    pinned: Tensor | None = None,
    radius: int | None = None,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """One affinity, two readouts (Algorithm 1: V_q = A^T V_r, Y = A^T Y_r).

    query: P x C keys; memory_keys: T x P x C; memory_values: T x P x Cv (objects' values
    concatenated); memory_masks: T x P x O. Returns (values P x Cv, masks P x O), float32.
    Two readouts instead of one over a concatenation: no copy of the whole memory is made.
    """
    weights, indices = topk_affinity(
        query, memory_keys, k=k, temperature=temperature, grid=grid, pinned=pinned, radius=radius, chunk_size=chunk_size
    )
    T, P = memory_keys.shape[:2]
    for name, t in (("memory_values", memory_values), ("memory_masks", memory_masks)):
        if not isinstance(t, Tensor) or t.ndim != 3 or tuple(t.shape[:2]) != (T, P):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise UsageError(f"{name} must be {T} x {P} x channels like memory_keys, got {shape}")
    # reshape only copies a non-contiguous memory; the common contiguous one is a view.
    values = readout(weights, indices, memory_values.reshape(T * P, -1), chunk_size=chunk_size)
    masks = readout(weights, indices, memory_masks.reshape(T * P, -1), chunk_size=chunk_size)
    return values, masks


# --------------------------------------------------------------------------------------------
# Objects


def soft_aggregate(probs: Tensor) -> Tensor:
    """Merge independent per-object probabilities into one distribution (STM's soft aggregation).

    probs: O x H x W, each object's foreground probability. Returns (O+1) x H x W float32 summing
    to 1 over dim 0, background at index 0: background = prod(1 - p_i); all O+1 channels are
    clamped to [1e-7, 1-1e-7], turned into odds p/(1-p) and normalised. O = 0 gives all background.
    """
    if not isinstance(probs, Tensor) or probs.ndim != 3 or not probs.dtype.is_floating_point:
        raise UsageError(f"probs must be a floating O x H x W tensor, got {getattr(probs, 'shape', type(probs))}")
    p = probs.float()
    background = (1 - p).prod(dim=0, keepdim=True)  # empty product = 1 when O = 0
    p = torch.cat((background, p), dim=0).clamp(1e-7, 1 - 1e-7)
    odds = p / (1 - p)
    return odds / odds.sum(dim=0, keepdim=True)


def with_background(aggregated: Tensor) -> Tensor:
    """The (O+1) x H x W distribution of probabilities that are already soft-aggregated.

    aggregated: O x H x W, the object channels of soft_aggregate's output (what a refinement round
    leaves). Returns (O+1) x H x W float32 with background 1 - sum at index 0: equal to the
    soft_aggregate output they came from, without aggregating (and sharpening) a second time.
    """
    if not isinstance(aggregated, Tensor) or aggregated.ndim != 3 or not aggregated.dtype.is_floating_point:
        raise UsageError(f"aggregated must be a floating O x H x W tensor, got {getattr(aggregated, 'shape', type(aggregated))}")
    p = aggregated.float()
    return torch.cat(((1 - p.sum(dim=0, keepdim=True)).clamp_min(0), p), dim=0)


def channel_argmax(x: Tensor) -> Tensor:
    """x.argmax(dim=0): C x H x W (or C x ...) -> H x W int64, the first channel on ties.

    The same torch.argmax, over the last dim of a channels-last copy: torch's CPU reduction over a
    leading dim of a few channels walks memory with a stride and is slow (2 x 480 x 854: 39 ms
    on one core, 9 ms this way, copy included).
    """
    return x.movedim(0, -1).contiguous().argmax(dim=-1)


def label_masks(probs_with_bg: Tensor) -> Tensor:
    """The label map of a distribution as one binary mask per object.

    probs_with_bg: (O+1) x H x W, background at index 0 -> O x H x W bool, True where the object
    wins the argmax (the first channel wins ties). No F.one_hot: it checks its input on the host,
    which a CUDA graph cannot hold.
    """
    channels = torch.arange(probs_with_bg.shape[0], device=probs_with_bg.device).view(-1, 1, 1)
    return (channel_argmax(probs_with_bg).unsqueeze(0) == channels)[1:]


def labels_from_probs(probs_with_bg: Tensor, object_ids: Sequence[int]) -> Tensor:
    """Label map from soft_aggregate's output.

    probs_with_bg: (O+1) x H x W, background at index 0; object_ids: O distinct ids >= 1, the
    label of channel i+1. Returns H x W int64: 0 for background, else the winning object's id
    (the first channel wins ties).
    """
    if not isinstance(probs_with_bg, Tensor) or probs_with_bg.ndim != 3 or probs_with_bg.shape[0] < 1:
        raise UsageError("probs_with_bg must be an (O+1) x H x W tensor with the background at index 0")
    ids = list(object_ids)
    if len(ids) != probs_with_bg.shape[0] - 1:
        raise UsageError(f"{len(ids)} object ids given for {probs_with_bg.shape[0] - 1} object channels")
    if not all(_is_int(i) and i >= 1 for i in ids) or len(set(ids)) != len(ids):
        raise UsageError(f"object ids must be distinct ints >= 1 (0 is the background), got {ids}")
    lut = torch.tensor([0, *ids], dtype=torch.int64, device=probs_with_bg.device)
    return lut[channel_argmax(probs_with_bg)]
