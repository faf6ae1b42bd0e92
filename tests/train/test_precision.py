"""Mixed precision: the bf16 objective computes the same losses as float32, within bf16's error,
and the precision setting resolves as documented."""

from __future__ import annotations

import torch

from mevos.model import build_model, preset
from mevos.train.config import train_preset
from mevos.train.objective import Objective, SegTargets, autocast_dtype
from mevos.train.transforms import Transform


def _batch(seed: int = 0) -> tuple[torch.Tensor, list[Transform], list[Transform], SegTargets]:
    g = torch.Generator().manual_seed(seed)
    b, s = 2, 64
    frames = torch.rand(b, 3, 3, s, s, generator=g)
    phi_s = [Transform.crop((1, 1), (0.1, 0.2, 0.7, 0.7)), Transform.crop((1, 1), (0.0, 0.0, 0.8, 0.8), flip=True)]
    phi_l = [Transform.crop((1, 1), (0.2, 0.1, 0.6, 0.6), flip=True), Transform()]
    masks = torch.zeros(b, 3, 1, s, s)
    masks[:, :, :, 16:40, 20:48] = 1
    seg = SegTargets(masks, torch.tensor([2, 0]), torch.tensor([[1, 0], [1, 2]]), torch.tensor([True, True]))
    return frames, phi_s, phi_l, seg


def test_precision_resolves_as_documented() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) in (None, torch.bfloat16)


def test_bf16_losses_match_float32() -> None:
    """Every loss term of the bf16 objective is within 3% of the float32 one, and the gradients point
    the same way (cosine > 0.95), on the same weights and batch (bf16 keeps 8 bits of mantissa)."""
    torch.manual_seed(0)
    cfg = train_preset("tiny")
    out, grads = {}, {}
    for precision in ("fp32", "bf16"):
        model = build_model(preset(cfg.model), seed=0).train()
        objective = Objective(model, cfg.with_overrides({"precision": precision}))
        losses = objective(*_batch())
        losses["total"].backward()
        out[precision] = {k: float(v.detach()) for k, v in losses.items()}
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert out["fp32"].keys() == out["bf16"].keys() == {"short", "long", "seg", "total"}
    for k, v in out["fp32"].items():
        assert abs(out["bf16"][k] - v) <= 0.03 * abs(v) + 1e-3, (k, v, out["bf16"][k])
    cos = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cos > 0.95  # measured 0.97 on this batch
