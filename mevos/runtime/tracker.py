"""The per-frame loop of a tracking session (Algorithm 1 of the paper, over a stream).

    tracker = Tracker(backend, TrackerConfig())
    first = tracker.step(frame0, masks=labels0)      # objects given on the first frame
    for frame in frames:
        result = tracker.step(frame)                 # propagate; masks=... adds or corrects objects
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from mevos.errors import InputError, UsageError
from mevos.kernels.ops import IMPLS
from mevos.runtime import propagate as stages
from mevos.runtime.backend import Backend
from mevos.runtime.geometry import STRIDE, Geometry
from mevos.runtime.memory import AffinityConfig, MemoryBank
from mevos.runtime.profile import StageClock, mark

MAX_OBJECT_ID = 255  # label maps are 8-bit palette images


@dataclass(frozen=True)
class TrackerConfig:
    """Inference settings. top_k, temperature and mem_frames are the paper's DAVIS protocol; the
    others were chosen by measurement on the 17 DAVIS-2016 dev sequences with the shipped weights
    (benchmarks/results/quality_defaults_subset.json and davis_dev_default.json, mevos/assets/small.md):

    - max_short_side 320: frames with a larger short side are processed at 320 (smaller ones as
      they are); short_side, when set, is the exact working short side instead (e.g. 480). With
      the compiled CPU affinity, 320 costs ~6.5 FPS on 2 CPU cores and scores J&F 0.554 on the 17
      dev sequences against 0.461 at 240 (~11 FPS), better on every sequence
      (benchmarks/results/quality_resolution.json).
    - radius 5 feature cells (40 px at 320) for non-pinned memory frames: the paper's locality
      window (12 cells at 480p) scaled to the working size; at 240, 4 was measured best of 4, 6, 8
      and none (quality_defaults_subset.json).
    - refine_rounds 0: the shipped decoder, trained on pseudo masks for an hour of CPU, lowers J&F
      when it refines; the coarse mask A^T Y_r is the output. The paper's R = 2 is one flag away.
    - memory_masks "hard": a predicted frame enters the memory with its label map, not its
      probabilities, which otherwise fade a little through every read.
    """

    top_k: int = 10
    temperature: float = 0.05
    mem_frames: int = 20
    refine_rounds: int = 0
    radius: int | None = 5
    max_pinned: int = 8
    short_side: int | None = None  # exact working short side (None: the input's, capped by max_short_side)
    max_short_side: int | None = 320
    chunk_size: int = 1024
    max_objects: int = 32
    memory_masks: str = "hard"  # what a predicted frame stores: "soft" probabilities or its "hard" label map
    affinity_impl: str = "auto"  # the top-k affinity's code: auto | fused | reference | dense (AffinityConfig.impl)

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
            (self.affinity_impl in IMPLS, f"affinity_impl must be one of {', '.join(IMPLS)}"),
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
        return AffinityConfig(self.top_k, self.temperature, self.radius, self.chunk_size, self.affinity_impl)


class FrameResult:
    """One frame's output at the input resolution: labels H x W uint8 (0 = background, else the
    object id), probs O x H x W float32 (each object's probability, in the order of object_ids).

    The Tracker's are ready when step returns. The FastTracker's are still on their way from the
    device: reading labels or probs waits for them (`fetch`), so frame t+1 can be queued first.
    seconds: the step's wall time (the time to queue it, for the fast tracker); stages: per-stage
    milliseconds of a profiled step (step(..., profile=True)), else empty.
    """

    def __init__(self, index: int, labels: np.ndarray | None, probs: np.ndarray | None, object_ids: tuple[int, ...],
                 seconds: float = 0.0, stages: dict[str, float] | None = None,
                 fetch: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.index, self.object_ids, self.seconds = index, object_ids, seconds
        self.stages = stages if stages is not None else {}
        self._labels, self._probs, self._fetch = labels, probs, fetch

    def _ready(self) -> None:
        if self._fetch is not None:
            self._labels, self._probs = self._fetch()
            self._fetch = None

    @property
    def labels(self) -> np.ndarray:
        self._ready()
        assert self._labels is not None
        return self._labels

    @property
    def probs(self) -> np.ndarray:
        self._ready()
        assert self._probs is not None
        return self._probs


class FrameTracker(Protocol):
    """What `segment` and the server drive: Tracker, or FastTracker on a CUDA GPU."""

    @property
    def object_ids(self) -> tuple[int, ...]: ...

    def step(self, frame: np.ndarray, masks: np.ndarray | None = None, remove: tuple[int, ...] | list[int] = (),
             profile: bool = False) -> FrameResult: ...


def track(tracker: FrameTracker, frames: Iterable[np.ndarray], first_mask: np.ndarray
          ) -> Iterator[tuple[np.ndarray, FrameResult]]:
    """(frame, result) of each frame of a stream whose objects are given on its first frame
    (first_mask H x W ids), in order, one frame behind: frame t is queued before frame t-1's
    result is handed out, so a FastTracker's device work overlaps the caller's use of the labels."""
    pending: tuple[np.ndarray, FrameResult] | None = None
    for i, frame in enumerate(frames):
        result = tracker.step(frame, masks=first_mask if i == 0 else None)
        if pending is not None:
            yield pending
        pending = (frame, result)
    if pending is not None:
        yield pending


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
             remove: tuple[int, ...] | list[int] = (), profile: bool = False) -> FrameResult:
        """Segment one frame.

        frame: H x W x 3 uint8 RGB. masks: optional H x W label map (0 = no statement) whose
        objects are new or corrected on this frame: their pixels are taken as given and the frame
        is pinned in memory. remove: object ids to forget from this frame on. profile: time each
        stage (runtime.profile) into the result's `stages`.
        """
        t0 = time.perf_counter()
        clock = StageClock(self.backend.device) if profile else None
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
        mark(clock, "preprocess")
        key, res3, res2 = self.backend.encode_key(image)
        query = stages.query_of(key)
        mark(clock, "encode_key")

        probs, aggregated = None, False
        if self.memory and self.memory.object_ids:
            probs = self._propagate(image, query, res3, res2, geo, clock)
            aggregated = self.config.refine_rounds > 0  # the last round aggregated the objects already
        if given is not None:
            probs, aggregated = self._apply_given(probs, given, geo, query.dtype), False
        assert probs is not None and self.memory is not None
        ids = list(self.memory.object_ids)
        dist = stages.distribution(probs, aggregated)  # (O+1) x H'' x W''
        if self.config.memory_masks == "hard" and given is None:
            # The memory keeps the frame's label map (one-hot), not its probabilities: soft masks
            # read back through the affinity fade a little more with every frame.
            probs = stages.label_masks(dist).to(probs.dtype)
        self._memorise(image, query, probs, pinned=given is not None)
        mark(clock, "memory_write")
        full = geo.to_input(dist)  # (O+1) x H x W
        lut = torch.tensor([0, *ids], dtype=torch.uint8, device=full.device)
        labels = stages.label_map(full, lut)
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
        labels_np, probs_np = labels.cpu().numpy(), full[1:].float().cpu().numpy()
        mark(clock, "postprocess")
        result = FrameResult(self.frame_index, labels_np, probs_np, tuple(ids), seconds=time.perf_counter() - t0,
                             stages=clock.ms if clock is not None else None)
        self.frame_index += 1
        return result

    # -- stages -----------------------------------------------------------------------------

    def _propagate(self, image: Tensor, query: Tensor, res3: Tensor, res2: Tensor, geo: Geometry,
                   clock: StageClock | None) -> Tensor:
        """Read the memory and refine (Eq. 6-9, Algorithm 1) -> O x H'' x W'' probabilities: the
        coarse mask A^T Y_r when refine_rounds = 0, else the soft-aggregated objects of the last round."""
        assert self.memory is not None
        readout, coarse = stages.read_memory(self.memory, query, self.config.affinity, clock=clock)
        probs = stages.refine(self.backend, image, readout, stages.upsample(coarse, geo), res3, res2,
                              self.config.refine_rounds, clock)
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
        values, small = stages.memory_entry(self.backend, image, probs)
        self.memory.write(query.to(self.memory.dtype), values, small, pinned=pinned, stamp=self.frame_index)

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
