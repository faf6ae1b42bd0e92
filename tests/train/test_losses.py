"""Each loss is lower for true correspondences than for shuffled ones, and falls when optimised."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mevos.model import build_model, preset
from mevos.train.losses import long_loss, seg_forward, seg_loss, short_loss
from mevos.train.objective import Objective, SegTargets
from mevos.train.transforms import sample_phi


def _feats(seed: int, b: int = 2, d: int = 16, h: int = 6, w: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, h, w, generator=g), dim=1)


def _shuffle(x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flat = x.flatten(2)
    return flat[:, :, torch.randperm(flat.shape[2], generator=g)].view_as(x)


def test_short_loss_prefers_aligned_pixels() -> None:
    a = _feats(0)
    b = F.normalize(a + 0.3 * _feats(1), dim=1)  # the next frame: the same pixels, a little changed
    assert short_loss(a, b, 0.1) < short_loss(a, _shuffle(b), 0.1)


def test_long_loss_prefers_aligned_pixels() -> None:
    i_t = _feats(0)
    x_far = F.normalize(_shuffle(i_t, 5) + 0.2 * _feats(2), dim=1)  # a permutation of I_t's content
    x_far_phi = F.normalize(x_far + 0.2 * _feats(3), dim=1)  # E(Phi(I)) ~ Phi(E(I))
    true = long_loss(x_far_phi, x_far, i_t, 0.1)
    assert true < long_loss(x_far_phi, _shuffle(x_far, 9), i_t, 0.1)


def test_seg_loss_prefers_the_true_mask() -> None:
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 3:9] = 1
    logits = 4 * (2 * target - 1) + 0.5 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert seg_loss(logits, target) < seg_loss(_shuffle(logits), target)


def test_seg_forward_shapes_and_gradients() -> None:
    model = build_model(preset("small")).train()
    b, n, s = 2, 2, 32
    imgs = torch.rand(b, n, 3, s, s)
    masks = (torch.rand(b, n, 1, s, s) > 0.5).float()
    keys = model.encode_key(imgs.flatten(0, 1))[0].view(b, n, -1, s // 8, s // 8)
    qk, r3, r2 = model.encode_key(torch.rand(b, 3, s, s))
    logits = seg_forward(model, imgs, masks, keys, torch.rand(b, 3, s, s), qk, r3, r2, 0.05, top_k=4)
    assert logits.shape == (b, 1, s, s)
    seg_loss(logits, masks[:, 0]).backward()
    assert model.decoder.predict.weight.grad is not None and model.value_encoder.project.weight.grad is not None


def _fixed_batch(s: int = 48) -> tuple[torch.Tensor, list, list, SegTargets]:
    """Three frames per clip that are shifted copies of one textured image (true motion)."""
    g = torch.Generator().manual_seed(0)
    base = F.interpolate(torch.rand(2, 3, s // 4, s // 4, generator=g), size=(s + 8, s + 8), mode="bilinear")
    frames = torch.stack([base[:, :, d:d + s, d:d + s] for d in (0, 1, 4)], dim=1)  # B x 3 x 3 x S x S
    rng = np.random.default_rng(0)
    phis = [sample_phi(rng, 0.7, True) for _ in range(2)]
    phil = [sample_phi(rng, 0.7, True) for _ in range(2)]
    masks = torch.zeros(2, 3, 1, s, s)
    for j, d in enumerate((0, 1, 4)):
        masks[:, j, :, 10 - d:30 - d, 12 - d:34 - d] = 1
    seg = SegTargets(masks, torch.tensor([2, 2]), torch.tensor([[1, 0], [1, 0]]), torch.tensor([True, True]))
    return frames, phis, phil, seg


def test_a_few_steps_on_a_fixed_batch_lower_every_loss(tiny) -> None:
    torch.manual_seed(0)
    model = build_model(preset("small")).train()
    objective = Objective(model, tiny)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _fixed_batch()
    first = {k: float(v.detach()) for k, v in objective(*batch).items()}
    for _ in range(8):
        losses = objective(*batch)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in objective(*batch).items()}
    for k in ("short", "long", "seg", "total"):
        assert last[k] < first[k], (k, first[k], last[k])


def test_blockwise_info_nce_is_the_cross_entropy_of_the_whole_logits() -> None:
    """info_nce (logits a block of rows at a time, recomputed in the backward) gives the loss and
    gradients of F.cross_entropy over the whole B x n x m logits, in float32 and under bf16 autocast."""
    from mevos.train.losses import info_nce

    g = torch.Generator().manual_seed(3)
    q0, k0 = torch.randn(2, 70, 16, generator=g), torch.randn(2, 50, 16, generator=g)
    target = torch.randint(0, 50, (2, 70), generator=g)
    for autocast in (False, True):
        results = []
        for fn in ("whole", "blocks"):
            q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                if fn == "whole":
                    loss = F.cross_entropy(torch.bmm(q, k.transpose(1, 2)).float().flatten(0, 1), target.flatten())
                else:
                    loss = info_nce(q, k, target, block=16)  # 70 rows: 4 full blocks and a partial one
            loss.backward()
            results.append((loss.detach(), q.grad, k.grad))
        (l0, gq0, gk0), (l1, gq1, gk1) = results
        tol = 1e-2 if autocast else 1e-5  # bf16: the gradient products round differently per block
        assert torch.allclose(l0, l1, rtol=1e-5, atol=1e-5), (autocast, l0, l1)
        assert torch.allclose(gq0, gq1, rtol=tol, atol=tol * 1e-2), autocast
        assert torch.allclose(gk0, gk1, rtol=tol, atol=tol * 1e-2), autocast
        assert gq1.dtype == q0.dtype and gk1.dtype == k0.dtype


def test_blockwise_softmax_readout_is_softmax_then_product() -> None:
    """softmax_readout (a block of query rows at a time, recomputed in the backward) gives the output
    and gradients of bmm(softmax(bmm(q, k^T)), v) in float32; under bf16 autocast the readout
    products round to bf16 and stay close."""
    from mevos.train.losses import softmax_readout

    g = torch.Generator().manual_seed(4)
    q0, k0, v0 = torch.randn(2, 70, 16, generator=g) * 3, torch.randn(2, 90, 16, generator=g), torch.randn(2, 90, 9, generator=g)
    grad = torch.randn(2, 70, 9, generator=g)
    outs = []
    for fn in ("whole", "blocks", "blocks-bf16"):
        q, k, v = q0.clone().requires_grad_(), k0.clone().requires_grad_(), v0.clone().requires_grad_()
        if fn == "whole":
            out = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=2), v)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fn == "blocks-bf16"):
                out = softmax_readout(q, k, v, block=16)  # 70 rows: 4 full blocks and a partial one
        assert out.dtype == torch.float32 and out.shape == (2, 70, 9)
        out.backward(grad)
        outs.append((out.detach(), q.grad, k.grad, v.grad))
    for got, tol in ((outs[1], 1e-5), (outs[2], 3e-2)):
        for a, b in zip(outs[0], got):
            assert torch.allclose(a, b, rtol=tol, atol=tol * a.abs().max()), tol


def test_best_match_is_the_first_argmax() -> None:
    from mevos.train.losses import best_match

    g = torch.Generator().manual_seed(5)
    for n, m in ((60, 60), (40, 60)):  # one grid against another (the compiled operator on a CPU), or not
        q, k = F.normalize(torch.randn(3, n, 8, generator=g), dim=2), F.normalize(torch.randn(3, m, 8, generator=g), dim=2)
        k[:, 7] = k[:, 3]  # exact ties: the lower index wins, as torch.argmax
        q[:, :5] = k[:, 3:4]  # ... and rows whose best match is tied
        want = torch.bmm(q, k.transpose(1, 2)).argmax(dim=2)
        got = best_match(q, k)
        assert got.dtype == torch.int64 and torch.equal(got, want)
        assert not (got == 7).any() and (got[:, :5] == 3).all()
