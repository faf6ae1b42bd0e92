"""The training objective as one module, so DistributedDataParallel can wrap it: a batch of clips
in, the loss terms out (Eq. 16: L_seg + w_short L_short + w_long L_long, plus w_distill L_distill
when a teacher is set)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mevos.model.network import MevosNet
from mevos.train.config import TrainConfig
from mevos.errors import UsageError
from mevos.train.losses import distill_loss, long_loss, seg_forward, seg_loss, short_loss
from mevos.train.transforms import Transform, apply_batch


@dataclass
class SegTargets:
    """Pseudo masks of one object per clip on the clip's three frames: masks B x 3 x 1 x S x S in
    {0, 1}; query: B frame positions (0..2) of the predicted frame, the two others are references
    (the one nearer in time first); valid: B bools (clips where a pseudo object was found)."""

    masks: Tensor
    query: Tensor
    refs: Tensor  # B x 2 frame positions
    valid: Tensor


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the networks run in under autocast, or None for float32 throughout.

    'auto' is bfloat16 where the device computes it natively (CUDA with bf16; a CPU with
    AVX512-BF16 or AMX, where oneDNN's bf16 convolutions are several times faster than float32),
    else float32. Losses, affinities and the optimiser's weights stay float32 either way."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        native = [getattr(torch.cpu, f, lambda: False) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return torch.bfloat16 if any(f() for f in native) else None
    return None


def encoder_views(frames: Tensor, phi_short: list[Transform], phi_long: list[Transform], config: TrainConfig) -> Tensor:
    """The key encoder's input for a batch: frames B x 3 x 3 x S x S (t, t+1, t') -> the frames
    t, t+1, t' (frame-major: all t, then all t+1, ...) and, when a correspondence loss is on,
    Phi_short(I_t) and Phi_long(I_t'): 5B (or 3B) x 3 x S x S. No gradient flows to the images."""
    s = frames.shape[-1]
    f = frames.unbind(1)
    views = [f[0], f[1], f[2]]
    if config.w_short > 0 or config.w_long > 0:
        views += [apply_batch(f[0], phi_short, (s, s)), apply_batch(f[2], phi_long, (s, s))]
    return torch.cat(views)


class Objective(nn.Module):
    """Holds the model (as `.model`) and computes the losses of a batch."""

    def __init__(self, model: MevosNet, config: TrainConfig) -> None:
        super().__init__()
        # Convolution weights in channels_last (same values): oneDNN then runs every convolution and
        # its backward in that layout, without a reorder per layer (the value encoder's input, a
        # concatenation, would otherwise fall back to NCHW).
        self.model = model.to(memory_format=torch.channels_last)
        self.config = config
        self.dtype = autocast_dtype(config.precision, next(model.parameters()).device)
        self.teacher: nn.Module | None = None
        if config.teacher == "xfeat":
            from mevos.train.teacher import XFeatTeacher

            teacher = XFeatTeacher()
            if teacher.dim != model.config.key_dim:
                raise UsageError(f"the xfeat teacher gives {teacher.dim}-d descriptors but the "
                                 f"'{model.config.name}' model has {model.config.key_dim}-d keys")
            self.teacher = teacher

    def forward(self, frames: Tensor, phi_short: list[Transform], phi_long: list[Transform],
                seg: SegTargets | None = None, views: Tensor | None = None) -> dict[str, Tensor]:
        """frames B x 3 x 3 x S x S (t, t+1, t') -> {'short', 'long'[, 'distill'][, 'seg'], 'total'}.
        With w_short = w_long = 0 the two Phi views are not encoded (and their losses not computed).
        views: encoder_views(frames, phi_short, phi_long, config) when already made (the trainer
        makes them with the batch, in its background thread)."""
        cfg = self.config
        b, s = frames.shape[0], frames.shape[-1]
        g = (s // 8, s // 8)
        corr = cfg.w_short > 0 or cfg.w_long > 0
        if views is None:
            views = encoder_views(frames, phi_short, phi_long, cfg)
        with self._autocast():
            keys, res3, res2 = self.model.encode_key(views)
        keys = keys.float()
        k_t, k_next, k_far, *k_phi = keys.split(b)
        out: dict[str, Tensor] = {}
        total = keys.new_zeros(())
        if corr:
            next_phi, far_phi = apply_batch(k_next, phi_short, g), apply_batch(k_far, phi_long, g)
            # Under autocast the pixel-affinity products run in bf16 and the cross-entropies in float32
            # (mixed precision as usual); the argmax labels of L_long and the Phi grids stay float32.
            with self._autocast():
                out["short"] = short_loss(k_phi[0], next_phi, cfg.corr_temperature)
                out["long"] = long_loss(k_phi[1], far_phi, k_t, cfg.corr_temperature)
            total = cfg.w_short * out["short"] + cfg.w_long * out["long"]
        if self.teacher is not None:
            out["distill"] = distill_loss(keys[: 3 * b], self.teacher(views[: 3 * b]))
            total = total + cfg.w_distill * out["distill"]
        if seg is not None and bool(seg.valid.any()):
            out["seg"] = self._seg(frames, torch.stack([k_t, k_next, k_far], 1), res3[: 3 * b], res2[: 3 * b], seg)
            total = total + cfg.w_seg * out["seg"]
        out["total"] = total
        return out

    def _seg(self, frames: Tensor, keys: Tensor, res3: Tensor, res2: Tensor, seg: SegTargets) -> Tensor:
        cfg = self.config
        v = seg.valid
        b = frames.shape[0]
        idx = torch.arange(b, device=frames.device)
        refs = seg.refs[:, : cfg.num_refs]
        q = seg.query
        # res3/res2 are frame-major (all t, then all t+1, then all t'): entry of clip i, frame j is j*B + i
        r3 = res3[q * b + idx]
        r2 = res2[q * b + idx]
        rows = idx[:, None]
        with self._autocast():
            logits = seg_forward(
                self.model,
                ref_images=frames[rows, refs][v], ref_masks=seg.masks[rows, refs][v], ref_keys=keys[rows, refs][v],
                query_image=frames[idx, q][v], query_key=keys[idx, q][v], res3=r3[v], res2=r2[v],
                temperature=cfg.seg_temperature, top_k=cfg.seg_top_k,
            )
        return seg_loss(logits.float(), seg.masks[idx, q][v])

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The networks' stages run in self.dtype (nothing changes when it is None)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=self.dtype)
