"""The per-frame loop of a tracking session (Algorithm 1 of the paper, over a stream).

    tracker = Tracker(backend, TrackerConfig())
    first = tracker.step(frame0, masks=labels0)      # objects given on the first frame
    for frame in frames:
        result = tracker.step(frame)                 # propagate; masks=... adds or corrects objects
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mevos.errors import InputError, UsageError
from mevos.kernels.reference import channel_argmax, label_masks, soft_aggregate, with_background
from mevos.runtime.backend import Backend
from mevos.runtime.geometry import STRIDE, Geometry
from mevos.runtime.memory import AffinityConfig, MemoryBank

MAX_OBJECT_ID = 255  # label maps are 8-bit palette images


@dataclass(frozen=True)
class TrackerConfig:
    """Inference settings. top_k, temperature and mem_frames are the paper's DAVIS protocol; the
    others were chosen by measurement on the 17 DAVIS-2016 dev sequences with the shipped weights
    (benchmarks/results/quality_defaults_subset.json and davis_dev_default.json, mevos/assets/small.md):

    - max_short_side 240: frames with a larger short side are processed at 240 (smaller ones as
      they are). The CPU reference affinity takes ~7 s a frame at 480p with 20 memory frames, ~1 s
      at 240p. short_side, when set, is the exact working short side instead (e.g. 480).
    - radius 4 feature cells (32 px at 240p) for non-pinned memory frames: the paper's locality
      window (12 cells at 480p) scaled to 240p and measured (4 > 6 > 8 > none).
    - refine_rounds 0: the shipped decoder, trained on pseudo masks for an hour of CPU, lowers J&F
      when it refines; the coarse mask A^T Y_r is the output. The paper's R = 2 is one flag away.
    - memory_masks "hard": a predicted frame enters the memory with its label map, not its
      probabilities, which otherwise fade a little through every read.
    """

    top_k: int = 10
    temperature: float = 0.05
    mem_frames: int = 20
    refine_rounds: int = 0
    radius: int | None = 4
    max_pinned: int = 8
    short_side: int | None = None  # exact working short side (None: the input's, capped by max_short_side)
    max_short_side: int | None = 240
    chunk_size: int = 1024
    max_objects: int = 32
    memory_masks: str = "hard"  # what a predicted frame stores: "soft" probabilities or its "hard" label map

    def __post_init__(self) -> None:
        checks = [
            (self.top_k >= 1, "top_k must be >= 1"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.mem_frames >= 0, "mem_frames must be >= 0"),
            (self.refine_rounds >= 0, "refine_rounds must be >= 0"),
            (self.radius is None or self.radius >= 0, "radius must be >= 0 (or None for no limit)"),
            (self.max_pinned >= 1, "max_pinned must be >= 1"),
            (self.short_side is None or self.short_side >= STRIDE, f"short_side must be >= {STRIDE}"),
            (self.max_short_side is None or self.max_short_side >= STRIDE, f"max_short_side must be >= {STRIDE}"),
            (self.chunk_size >= 1, "chunk_size must be >= 1"),
            (1 <= self.max_objects <= MAX_OBJECT_ID, f"max_objects must be in 1..{MAX_OBJECT_ID}"),
            (self.memory_masks in ("soft", "hard"), "memory_masks must be 'soft' or 'hard'"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(f"tracker setting: {msg}")

    def geometry(self, size: tuple[int, int]) -> Geometry:
        """The working geometry of frames of `size` (H, W): short_side if set, else the input size
        scaled down to max_short_side when its short side is larger."""
        side = self.short_side
        if side is None and self.max_short_side is not None and min(size) > self.max_short_side:
            side = self.max_short_side
        return Geometry.for_size(size, side)

    @property
    def affinity(self) -> AffinityConfig:
        return AffinityConfig(self.top_k, self.temperature, self.radius, self.chunk_size)


@dataclass
class FrameResult:
    """One frame's output at the input resolution."""

    index: int
    labels: np.ndarray  # H x W uint8, 0 = background, else object id
    probs: np.ndarray  # O x H x W float32, probability of each object (order of object_ids)
    object_ids: tuple[int, ...]
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)


class Tracker:
    """Segments the given objects through a stream, one `step` per frame. Not thread-safe: one
    tracker is one session."""

    def __init__(self, backend: Backend, config: TrackerConfig | None = None) -> None:
        self.backend = backend
        self.config = config or TrackerConfig()
        self.geometry: Geometry | None = None
        self.memory: MemoryBank | None = None
        self.frame_index = 0

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(self.memory.object_ids) if self.memory is not None else ()

    def reset(self) -> None:
        """Forget every frame and object (the next step must carry masks)."""
        self.geometry, self.memory, self.frame_index = None, None, 0

    @torch.inference_mode()
    def step(self, frame: np.ndarray | Tensor, masks: np.ndarray | Tensor | None = None,
             remove: tuple[int, ...] | list[int] = ()) -> FrameResult:
        """Segment one frame.

        frame: H x W x 3 uint8 RGB. masks: optional H x W label map (0 = no statement) whose
        objects are new or corrected on this frame: their pixels are taken as given and the frame
        is pinned in memory. remove: object ids to forget from this frame on.
        """
        t0 = time.perf_counter()
        cfg, dev = self.config, self.backend.device
        if isinstance(frame, np.ndarray) and not frame.flags.writeable:
            frame = frame.copy()  # torch wants writable memory; decoders hand out read-only frames
        frame_t = torch.as_tensor(frame)
        if frame_t.ndim != 3 or frame_t.shape[2] != 3 or frame_t.dtype != torch.uint8:
            raise InputError(f"a frame must be H x W x 3 uint8 RGB, got {tuple(frame_t.shape)} {frame_t.dtype}")
        geo = self.geometry
        if geo is None:
            if masks is None:
                raise InputError("the first frame of a session needs a mask with at least one object")
            geo = cfg.geometry((int(frame_t.shape[0]), int(frame_t.shape[1])))
        # Validate everything before any state changes, so a bad request loses nothing.
        given = self._check_masks(masks, geo) if masks is not None else None
        self._check_remove(remove)
        if given is not None:
            self._check_object_count(given, remove)
        elif not set(self.object_ids) - set(remove):
            raise InputError("no objects would be left to track; give a mask with at least one object")
        self.geometry = geo
        self._remove(remove)

        image = geo.image(frame_t, dev)
        key, res3, res2 = self.backend.encode_key(image)
        h, w = geo.grid
        query = key[0].reshape(key.shape[1], h * w).t()
        stages: dict[str, float] = {}

        probs, aggregated = None, False
        if self.memory and self.memory.object_ids:
            probs = self._propagate(image, query, res3, res2, geo)
            aggregated = self.config.refine_rounds > 0  # the last round aggregated the objects already
        if given is not None:
            probs, aggregated = self._apply_given(probs, given, geo, query.dtype), False
        assert probs is not None and self.memory is not None
        ids = list(self.memory.object_ids)
        # Objects are merged by soft aggregation exactly once per frame.
        dist = with_background(probs) if aggregated else soft_aggregate(probs)  # (O+1) x H'' x W''
        if self.config.memory_masks == "hard" and given is None:
            # The memory keeps the frame's label map (one-hot), not its probabilities: soft masks
            # read back through the affinity fade a little more with every frame.
            probs = label_masks(dist).to(probs.dtype)
        self._memorise(image, query, probs, pinned=given is not None)
        full = geo.to_input(dist)  # (O+1) x H x W
        lut = torch.tensor([0, *ids], dtype=torch.uint8, device=full.device)
        labels = lut[channel_argmax(full)]
        if given is not None:
            # Given pixels are returned exactly as given, not as resampled by the working resolution.
            given_ids = torch.unique(given)
            given_ids = given_ids[given_ids != 0]
            stated = given != 0
            labels = torch.where(stated, given.to(torch.uint8), labels)
            labels[~stated & torch.isin(labels, given_ids.to(torch.uint8))] = 0
            for j, i in enumerate(ids):
                if bool((given_ids == i).any()):
                    full[j + 1] = (given == i).to(full.dtype)
        result = FrameResult(
            index=self.frame_index,
            labels=labels.cpu().numpy(),
            probs=full[1:].float().cpu().numpy(),
            object_ids=tuple(ids),
            seconds=time.perf_counter() - t0,
            stages=stages,
        )
        self.frame_index += 1
        return result

    # -- stages -----------------------------------------------------------------------------

    def _propagate(self, image: Tensor, query: Tensor, res3: Tensor, res2: Tensor, geo: Geometry) -> Tensor:
        """Read the memory and refine (Eq. 6-9, Algorithm 1) -> O x H'' x W'' probabilities: the
        coarse mask A^T Y_r when refine_rounds = 0, else the soft-aggregated objects of the last round."""
        assert self.memory is not None
        h, w = geo.grid
        readout, coarse = self.memory.read(query, self.config.affinity)
        o = readout.shape[0]
        readout = readout.view(o, -1, h, w)
        probs = F.interpolate(coarse.view(o, 1, h, w), size=geo.padded, mode="bilinear", align_corners=False)
        probs = probs.clamp(0, 1)
        for _ in range(self.config.refine_rounds):
            value = self.backend.encode_value(image, probs.to(image.dtype))
            logits = self.backend.decode(readout.to(value.dtype), value, res3, res2)
            probs = soft_aggregate(torch.sigmoid(logits.float())[:, 0])[1:].unsqueeze(1)
        return probs[:, 0].float()

    def _apply_given(self, probs: Tensor | None, given: Tensor, geo: Geometry, dtype: torch.dtype) -> Tensor:
        """Objects in the given label map take their given pixels; the others lose those pixels."""
        given_ids = [int(i) for i in torch.unique(given).tolist() if i != 0]
        if self.memory is None:
            h, w = geo.grid
            self.memory = MemoryBank(
                self.config.mem_frames, self.config.max_pinned, (h, w),
                self.backend.config.key_dim, self.backend.config.value_dim,
                # The memory keeps the backend's key dtype (fp16 on CUDA), which the fused kernel reads.
                self.backend.device, dtype,
            )
        self.memory.add_objects([i for i in given_ids if i not in self.memory.object_ids])
        ids = self.memory.object_ids
        onehot = geo.masks(given, ids)[:, 0]  # O x H'' x W''
        claimed = onehot.amax(dim=0, keepdim=True) if ids else None
        out = torch.zeros_like(onehot) if probs is None else torch.cat(
            [probs, torch.zeros(len(ids) - probs.shape[0], *probs.shape[1:], device=probs.device)]
        )
        for j, i in enumerate(ids):
            out[j] = onehot[j] if i in given_ids else out[j] * (1 - claimed[0])
        return out

    def _memorise(self, image: Tensor, query: Tensor, probs: Tensor, pinned: bool) -> None:
        """Encode the frame's final masks and store the frame in memory."""
        assert self.memory is not None
        o = probs.shape[0]
        values = self.backend.encode_value(image, probs.unsqueeze(1).to(image.dtype))  # O x Cv x h x w
        small = F.avg_pool2d(probs.unsqueeze(1), STRIDE)[:, 0]  # O x h x w
        p = query.shape[0]
        self.memory.write(
            query.to(self.memory.dtype),
            values.reshape(o, -1, p).permute(2, 0, 1),
            small.reshape(o, p).t(),
            pinned=pinned,
            stamp=self.frame_index,
        )

    # -- input checks -----------------------------------------------------------------------

    def _check_masks(self, masks: np.ndarray | Tensor, geo: Geometry) -> Tensor:
        m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks)
        if m.ndim != 2:
            raise InputError(f"a mask must be an H x W label map, got shape {tuple(m.shape)}")
        if tuple(m.shape) != geo.size:
            raise InputError(
                f"mask size {m.shape[0]}x{m.shape[1]} differs from the frame size {geo.size[0]}x{geo.size[1]}"
            )
        if m.dtype.is_floating_point or m.dtype == torch.bool:
            m = m.to(torch.int64)
        if int(m.min()) < 0 or int(m.max()) > MAX_OBJECT_ID:
            raise InputError(f"mask labels must be in 0..{MAX_OBJECT_ID}")
        if int(m.max()) == 0:
            raise InputError("the mask has no object (every pixel is 0 = background)")
        return m.to(self.backend.device, torch.int64)

    def _check_remove(self, remove: tuple[int, ...] | list[int]) -> None:
        known = set(self.object_ids)
        unknown = [i for i in remove if i not in known]
        if unknown:
            raise InputError(f"cannot remove unknown object id(s) {unknown}; tracked: {sorted(known)}")

    def _check_object_count(self, given: Tensor, remove: tuple[int, ...] | list[int]) -> None:
        ids = set(self.object_ids) - set(remove)
        total = len(ids | {int(i) for i in torch.unique(given).tolist() if i != 0})
        if total > self.config.max_objects:
            raise InputError(f"too many objects: {total} > max_objects {self.config.max_objects}")

    def _remove(self, remove: tuple[int, ...] | list[int]) -> None:
        if remove:
            assert self.memory is not None
            self.memory.remove_objects(list(remove))
