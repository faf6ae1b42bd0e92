"""The three losses: L_short (Eq. 11-12), L_long (Eq. 13-15), L_seg (Eq. 5-10).

Feature maps are B x D x h x w; pixels are compared by cosine similarity over a temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mevos.model.network import MevosNet


def _flat(x: Tensor) -> Tensor:
    """B x D x h x w -> B x hw x D, L2-normalised over D."""
    return F.normalize(x.flatten(2).transpose(1, 2), dim=2)


class _InfoNCE(torch.autograd.Function):
    """Mean cross-entropy of the rows of Q K^T (logits) against target columns, computed a block
    of rows at a time: the B x n x m logits are never held whole, in the forward nor in the backward
    (which recomputes each block's logits, a small product, instead of storing them). Same
    arithmetic as `F.cross_entropy(torch.bmm(q, k.mT).float(), target)` with the product in
    `dtype` (bf16 under autocast): logits rounded to `dtype`, softmax and sums in float32, the
    logits' gradient rounded to `dtype` for the two backward products."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, target: Tensor, dtype: torch.dtype, block: int) -> Tensor:  # noqa: ANN001
        b, n, _ = q.shape
        qc, kc = q.to(dtype), k.to(dtype)
        kt = kc.transpose(1, 2)
        lse = q.new_empty((b, n), dtype=torch.float32)
        picked = q.new_empty((b, n), dtype=torch.float32)
        with torch.autocast(q.device.type, enabled=False):
            for i in range(0, n, block):
                logits = torch.bmm(qc[:, i : i + block], kt)  # B x c x m, in dtype
                picked[:, i : i + block] = logits.gather(2, target[:, i : i + block, None]).squeeze(2)
                logits = logits.float()
                top = logits.amax(dim=2, keepdim=True)  # logsumexp, in place on this block's copy
                lse[:, i : i + block] = logits.sub_(top).exp_().sum(dim=2).log_().add_(top[:, :, 0])
        ctx.save_for_backward(qc, kc, target, lse)
        ctx.meta = (q.dtype, k.dtype, block)
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        qc, kc, target, lse = ctx.saved_tensors
        q_dtype, k_dtype, block = ctx.meta
        b, n, _ = qc.shape
        scale = grad.float() / (b * n)
        grad_q = torch.empty_like(qc)
        grad_k = torch.zeros(kc.shape, dtype=torch.float32, device=kc.device)
        kt = kc.transpose(1, 2)
        with torch.autocast(qc.device.type, enabled=False):
            for i in range(0, n, block):
                rows = qc[:, i : i + block]
                p = torch.bmm(rows, kt).float().sub_(lse[:, i : i + block, None]).exp_()  # softmax, B x c x m
                p.scatter_add_(2, target[:, i : i + block, None], p.new_full((b, p.shape[1], 1), -1.0))
                g = p.mul_(scale).to(qc.dtype)  # d loss / d logits
                grad_q[:, i : i + block] = torch.bmm(g, kc)
                grad_k += torch.bmm(g.transpose(1, 2), rows).float()
        return grad_q.to(q_dtype), grad_k.to(k_dtype), None, None, None


def info_nce(q: Tensor, k: Tensor, target: Tensor, block: int = 128) -> Tensor:
    """Mean over the B x n rows of the cross-entropy of softmax(q_i . k_j over j) against
    target_i. q B x n x D, k B x m x D, target B x n (indices into m) -> scalar. Equal to
    `F.cross_entropy(torch.bmm(q, k.mT).float().flatten(0, 1), target.flatten())` (the product in
    the autocast dtype when autocast is on), without materialising the B x n x m logits: on a CPU
    this loss and its backward were a quarter of a correspondence step (memory-bound passes over
    them), now a few cache-sized blocks."""
    dtype = q.dtype
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
    return _InfoNCE.apply(q, k, target, dtype, block)


def short_loss(x_t_phi: Tensor, x_next_phi: Tensor, temperature: float) -> Tensor:
    """Eq. 12: per-pixel InfoNCE between X'_t = E(Phi(I_t)) and X_{t+1} = Phi(E(I_{t+1})), both
    B x D x h x w on the same grid: pixel k of X_{t+1} must pick pixel k of X'_t among all l."""
    a, b = _flat(x_next_phi), _flat(x_t_phi)
    target = torch.arange(a.shape[1], device=a.device).expand(a.shape[0], -1)
    return info_nce(a / temperature, b, target)  # 1/T on the B x hw x D factor: cheaper


def long_loss(x_far_phi_enc: Tensor, x_far_enc_phi: Tensor, x_t: Tensor, temperature: float) -> Tensor:
    """Eq. 14-15. x_far_phi_enc: X'_{t'} = E(Phi(I_{t'})); x_far_enc_phi: X_{t'} = Phi(E(I_{t'}));
    x_t: E(I_t); all B x D x h x w. The argmax match o_k in I_t of pixel k of X'_{t'} (no gradient)
    is the label of a cross-entropy over the affinities of pixel k of X_{t'} with I_t."""
    i_t = _flat(x_t)
    with torch.no_grad(), torch.autocast(x_t.device.type, enabled=False):  # float32 argmax, also under autocast
        match = best_match(_flat(x_far_phi_enc), i_t)  # B x hw
    return info_nce(_flat(x_far_enc_phi) / temperature, i_t, match)


def best_match(q: Tensor, k: Tensor) -> Tensor:
    """argmax_j q_i . k_j for each row i (the lower j on ties): q B x n x D, k B x m x D float32
    -> B x n int64. On a CPU with n = m (pixels of one grid against another) through the compiled
    top-k affinity with k = 1 (no n x m score matrix written and read back; about half the time of
    bmm + argmax), else bmm + argmax."""
    from mevos.kernels import cpu

    m = k.shape[1]
    if q.device.type != "cpu" or q.dtype != torch.float32 or q.shape[1] != m or not cpu.available():
        return torch.bmm(q, k.transpose(1, 2)).argmax(dim=2)  # (the operator scores a grid against frames of it)
    return torch.stack([cpu.topk_affinity(qi.contiguous(), ki.contiguous()[None], k=1, temperature=1.0,
                                          grid=(1, m))[1][:, 0] for qi, ki in zip(q, k)])


def distill_loss(key: Tensor, target: Tensor) -> Tensor:
    """Mean over pixels of 1 - cosine(key, target); key B x D x h x w (gradient), target the
    teacher's B x D x h x w descriptors (no gradient)."""
    return (1 - F.cosine_similarity(key, target.detach(), dim=1)).mean()


def affinity(ref_keys: Tensor, query_key: Tensor, temperature: float, top_k: int = 0) -> Tensor:
    """Eq. 6. ref_keys B x N x D x h x w, query_key B x D x h x w (unit norm) -> A: B x Nhw x hw,
    softmax over the references for each query pixel (top-k only when top_k > 0, as the runtime)."""
    b, n, d = ref_keys.shape[:3]
    kr = ref_keys.permute(0, 1, 3, 4, 2).reshape(b, -1, d)  # B x Nhw x D
    kq = query_key.flatten(2).transpose(1, 2) / temperature  # B x hw x D: scales hw x D, not the Nhw x hw scores
    # Scores laid out B x hw x Nhw so the softmax (and its backward) runs over the contiguous last
    # dim, several times faster than over dim 1; returned as the B x Nhw x hw view of Eq. 6.
    scores = torch.bmm(kq, kr.transpose(1, 2))  # B x hw x Nhw
    if 0 < top_k < scores.shape[2]:
        kth = scores.topk(top_k, dim=2).values[:, :, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return torch.softmax(scores, dim=2).transpose(1, 2)


class _SoftmaxReadout(torch.autograd.Function):
    """softmax(q k^T over the keys) v, a block of query rows at a time: the B x n x m affinities
    are never held whole (the backward recomputes each block's, a small product). The scores,
    the softmax and the products that give q's and k's gradients run in float32; the readout
    products (with p, v and the output's gradient) in `dtype` (bf16 under autocast, as autocast
    would run them). With dtype float32: `torch.bmm(torch.softmax(torch.bmm(q, k.mT), dim=2), v)`."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, dtype: torch.dtype, block: int) -> Tensor:  # noqa: ANN001
        b, n, _ = q.shape
        out = q.new_empty((b, n, v.shape[2]))
        lse = q.new_empty((b, n))
        kt, vc = k.transpose(1, 2), v.to(dtype)
        for i in range(0, n, block):
            s = torch.bmm(q[:, i : i + block], kt)  # B x c x m
            lse_i = torch.logsumexp(s, dim=2, keepdim=True)
            out[:, i : i + block] = torch.bmm(s.sub_(lse_i).exp_().to(dtype), vc)
            lse[:, i : i + block] = lse_i[:, :, 0]
        ctx.save_for_backward(q, k, vc, out, lse)
        ctx.meta = (block, v.dtype)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: ANN001, ANN205
        q, k, vc, out, lse = ctx.saved_tensors
        block, v_dtype = ctx.meta
        g = g.contiguous()
        grad_q, grad_k = torch.empty_like(q), torch.zeros_like(k)
        grad_v = torch.zeros(vc.shape, dtype=torch.float32, device=vc.device)
        kt, vt = k.transpose(1, 2), vc.transpose(1, 2)
        delta = (g * out).sum(2, keepdim=True)  # B x n x 1: sum_j p_ij dp_ij = g_i . out_i
        gc = g.to(vc.dtype)
        for i in range(0, q.shape[1], block):
            rows, g_i = q[:, i : i + block], gc[:, i : i + block]
            p = torch.bmm(rows, kt).sub_(lse[:, i : i + block, None]).exp_()  # softmax, B x c x m
            grad_v += torch.bmm(p.to(vc.dtype).transpose(1, 2), g_i)
            ds = torch.bmm(g_i, vt).float().sub_(delta[:, i : i + block]).mul_(p)  # d loss / d scores
            grad_q[:, i : i + block] = torch.bmm(ds, k)
            grad_k += torch.bmm(ds.transpose(1, 2), rows)
        return grad_q, grad_k, grad_v.to(v_dtype), None, None


def softmax_readout(q: Tensor, k: Tensor, v: Tensor, block: int = 128) -> Tensor:
    """softmax(q k^T, over the m keys) v: q B x n x D, k B x m x D (float32), v B x m x C -> B x n x C
    float32. Eq. 6-8 with the full softmax, a block of rows at a time (`_SoftmaxReadout`); the
    readout in the autocast dtype when autocast is on, else in float32."""
    dtype = torch.float32
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
    with torch.autocast(q.device.type, enabled=False):
        return _SoftmaxReadout.apply(q, k, v, dtype, block)


def seg_forward(model: MevosNet, ref_images: Tensor, ref_masks: Tensor, ref_keys: Tensor, query_image: Tensor,
                query_key: Tensor, res3: Tensor, res2: Tensor, temperature: float, top_k: int = 0) -> Tensor:
    """Eq. 5-9 for one object per batch entry, through the model's own stages.

    ref_images B x N x 3 x H x W, ref_masks B x N x 1 x H x W in [0, 1], ref_keys B x N x D x h x w,
    query_image B x 3 x H x W, query_key B x D x h x w, res3/res2 the query's skips
    -> logits B x 1 x H x W (the decoder's prediction of the query's mask)."""
    b, n = ref_images.shape[:2]
    h, w = query_key.shape[-2:]
    values = model.encode_value(ref_images.flatten(0, 1), ref_masks.flatten(0, 1))  # BN x Cv x h x w
    cv = values.shape[1]
    vr = values.reshape(b, n, cv, h, w).permute(0, 1, 3, 4, 2).reshape(b, n * h * w, cv)
    yr = F.avg_pool2d(ref_masks.flatten(0, 1), 8).reshape(b, n * h * w, 1)  # masks at stride 8, as the runtime
    # Under autocast (bf16 networks) the affinity stays float32: scores over a temperature of 0.05
    # need more than bf16's 8-bit mantissa. The readout, a weighted mean, may be bf16.
    if 0 < top_k < n * h * w or query_key.device.type != "cpu":  # (the blocks were measured on a CPU only)
        with torch.autocast(query_key.device.type, enabled=False):
            a = affinity(ref_keys.float(), query_key.float(), temperature, top_k)  # B x Nhw x hw
        # Eq. 7 and 8 in one product: the reference masks ride as one more value channel
        out = torch.bmm(a.transpose(1, 2), torch.cat([vr, yr.to(vr.dtype)], dim=2)).transpose(1, 2)  # B x (Cv+1) x hw
    else:  # on a CPU, the full softmax: affinity and readout a block of query pixels at a time
        kr = ref_keys.float().permute(0, 1, 3, 4, 2).reshape(b, -1, ref_keys.shape[2])  # B x Nhw x D
        kq = query_key.float().flatten(2).transpose(1, 2) / temperature  # B x hw x D
        out = softmax_readout(kq, kr, torch.cat([vr, yr.to(vr.dtype)], dim=2)).transpose(1, 2)  # B x (Cv+1) x hw
    readout = out[:, :cv].reshape(b, cv, h, w)  # Eq. 7
    coarse = out[:, cv:].float().reshape(b, 1, h, w)  # Eq. 8
    coarse = F.interpolate(coarse, size=query_image.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
    value = model.encode_value(query_image, coarse)  # Eq. 9: V([I_q, Y_bar])
    return model.decode(readout, value, res3, res2)


def seg_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Eq. 10: cross-entropy of the predicted mask (one sigmoid logit per object, as the runtime
    reads it) against the pseudo mask. logits, target B x 1 x H x W; valid: B bools (clips whose
    pseudo object exists)."""
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    if valid is None:
        return per.mean()
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return per[valid].mean()
