"""The stages of one frame of Algorithm 1, each a function over explicit tensors. Every tracker
(Tracker, FastTracker) and the benchmark run these and nothing else, in this order:

    key, res3, res2 = net.encode_key(image)                    # E
    readout, coarse = read_memory(memory, query, affinity)     # A = softmax(top-k(K_r K_q^T / T))
    probs = refine(net, image, upsample(coarse, geo), ...)     # V_q = A^T V_r, then R rounds of V, D
    dist = distribution(probs, aggregated=rounds > 0)          # soft aggregation of the objects
    values, small = memory_entry(net, image, masks)            # V over the final masks, pooled masks
    labels = label_map(geo.to_input(dist), lut)                # argmax, object ids

Shapes: P = h*w feature cells (stride 8), O objects, Cv value channels, H'' x W'' the padded
working resolution, H x W the input's. `net` is anything with the model's stage methods (a
runtime Backend or a MevosNet).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from mevos.errors import UsageError
from mevos.runtime.geometry import STRIDE, Geometry
from mevos.runtime.memory import AffinityConfig, MemoryBank
from mevos.runtime.profile import StageClock, mark

__all__ = ["StageNet", "query_of", "read_memory", "upsample", "refine", "soft_aggregate", "with_background",
           "distribution", "label_masks", "memory_entry", "label_map"]


class StageNet(Protocol):
    """The model's stage methods (mevos.model.MevosNet and every runtime Backend have them)."""

    def encode_value(self, image: Tensor, masks: Tensor) -> Tensor: ...

    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor: ...


def query_of(key: Tensor) -> Tensor:
    """key 1 x Ck x h x w -> the query P x Ck (a view: position-major keys)."""
    return key[0].reshape(key.shape[1], -1).t()


def read_memory(memory: MemoryBank, query: Tensor, affinity: AffinityConfig,
                out: tuple[Tensor, Tensor] | None = None, clock: StageClock | None = None,
                error_flag: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """query P x Ck -> (readout O x Cv x h x w, coarse masks O x 1 x h x w) float32: V_q = A^T V_r
    and Y = A^T Y_r through one top-k affinity (MemoryBank.read); into `out` when given
    (buffers O x Cv x P and O x P). clock: the profiling hook; error_flag: see MemoryBank.read."""
    h, w = memory.grid
    readout, coarse = memory.read(query, affinity, out, clock, error_flag)
    o = readout.shape[0]
    return readout.view(o, -1, h, w), coarse.view(o, 1, h, w)


def upsample(coarse: Tensor, geo: Geometry) -> Tensor:
    """coarse O x 1 x h x w -> O x 1 x H'' x W'' probabilities (bilinear, clamped to [0, 1])."""
    return F.interpolate(coarse, size=geo.padded, mode="bilinear", align_corners=False).clamp(0, 1)


def refine(net: StageNet, image: Tensor, readout: Tensor, probs: Tensor, res3: Tensor, res2: Tensor,
           rounds: int, clock: StageClock | None = None) -> Tensor:
    """R refinement rounds Y = D([V_q, V(I_q, Y)], res3, res2), each ending in soft aggregation.

    image 1 x 3 x H'' x W''; readout O x Cv x h x w; probs O x 1 x H'' x W'' (the upsampled coarse
    mask); res3, res2 the key encoder's skips. Returns O x 1 x H'' x W'': probs itself when
    rounds = 0, else the soft-aggregated object channels of the last round (float32). clock: the
    profiling hook (V charged to refine_encode_value, D and the aggregation to refine_decode)."""
    for _ in range(rounds):
        value = net.encode_value(image, probs.to(image.dtype))
        mark(clock, "refine_encode_value")
        logits = net.decode(readout.to(value.dtype), value, res3, res2)
        probs = soft_aggregate(torch.sigmoid(logits.float())[:, 0])[1:].unsqueeze(1)
        mark(clock, "refine_decode")
    return probs


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
        raise UsageError("aggregated must be a floating O x H x W tensor, got "
                         f"{getattr(aggregated, 'shape', type(aggregated))}")
    p = aggregated.float()
    return torch.cat(((1 - p.sum(dim=0, keepdim=True)).clamp_min(0), p), dim=0)


def distribution(probs: Tensor, aggregated: bool) -> Tensor:
    """probs O x H x W -> (O+1) x H x W, background first. Objects are merged by soft aggregation
    exactly once per frame: `aggregated` says the refinement rounds did it already."""
    return with_background(probs) if aggregated else soft_aggregate(probs)


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


def memory_entry(net: StageNet, image: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """A frame's memory entry from its final masks O x H'' x W'' (float, soft or one-hot):
    (values P x O x Cv in the network's dtype, pooled masks P x O float32), ready for
    MemoryBank.write (keys are the frame's query)."""
    o = masks.shape[0]
    values = net.encode_value(image, masks.unsqueeze(1).to(image.dtype))  # O x Cv x h x w
    small = F.avg_pool2d(masks.unsqueeze(1), STRIDE)[:, 0]  # O x h x w
    p = small.shape[1] * small.shape[2]
    return values.reshape(o, -1, p).permute(2, 0, 1), small.reshape(o, p).t()


def label_map(full: Tensor, lut: Tensor) -> Tensor:
    """full (O+1) x H x W distribution at the input size, lut (O+1) uint8 = [0, *object ids]
    -> H x W uint8 label map (argmax; the first channel wins ties)."""
    return lut[channel_argmax(full)]
