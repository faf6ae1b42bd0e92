"""The fast tracker: a tracking session on a CUDA GPU, built for throughput. What `mevos segment`
and `mevos serve` run on CUDA by default (--no-fast: the Tracker).

The Tracker's stages (mevos.runtime.propagate) and memory bank, run differently:

- fp16 weights, activations and memory (soft aggregation and the readouts accumulate in fp32);
- the affinity through AffinityConfig.impl ('auto': the fused CUDA kernels);
- the fixed-shape stages captured once as CUDA graphs and replayed every frame: encode_key
  (with the uint8 -> float conversion, resizing and padding), the R refinement rounds, the memory
  entry, the label map; only the memory read (whose length grows while the ring fills) and the
  slot copies run eagerly;
- frames go up from pinned host buffers on a copy stream, so frame t+1's upload overlaps frame
  t's compute; label maps come back into pinned buffers: a result's labels are read (and waited
  for) when asked, typically one frame later;
- nothing waits for the device inside a frame: the pinned-frame flags are a kernel argument, the
  kernels' error flag comes back with the labels and is read once, when they are.

    fast = FastTracker(model, TrackerConfig(mem_frames=20), device="cuda")
    prev = fast.step(frame0, masks=labels0)
    for frame in frames:
        cur = fast.step(frame)
        labels = prev.labels          # frame t-1's H x W uint8, ready by now
        prev = cur

Limits, by design: one frame size and one set of objects, fixed by the first frame (objects are
not added, corrected or removed later: `to_tracker` hands the session over to a Tracker that can),
at most HOST_SLOTS - 1 results outstanding. Without CUDA, constructing one raises UsageError
saying so, except with every CUDA feature switched off (FastOptions.eager_cpu()): the same code
then runs eagerly in fp32 on the CPU, which is how the tests check its math against the
Tracker's on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mevos.errors import InputError, UsageError
from mevos.model.network import MevosNet
from mevos.runtime import propagate as stages
from mevos.runtime.backend import Backend
from mevos.runtime.memory import MemoryBank
from mevos.runtime.profile import StageClock, mark
from mevos.runtime.tracker import FrameResult, Tracker, TrackerConfig

HOST_SLOTS = 3  # pinned label buffers: results may be read up to two frames late
STAGES = ("upload", "encode_key", "affinity_topk", "readout", "refine", "memory_write", "postprocess")


def warm_kernels(device: torch.device, key_dim: int, value_dtypes: tuple[torch.dtype, ...] = (torch.float16,)
                 ) -> str:
    """Compile (or load from the cache) and run the fused kernels once on `device` for keys of
    `key_dim` channels, so that no session's first frame waits for NVRTC. Returns the top-k path
    a session will take (a fallback is warned about here, once, rather than mid-stream)."""
    from mevos.runtime.memory import AffinityConfig

    grid = (4, 16)
    bank = MemoryBank(1, 1, grid, key_dim, 1, device, torch.float16)
    bank.add_objects([1])
    g = torch.Generator().manual_seed(0)
    key = torch.nn.functional.normalize(torch.randn(grid[0] * grid[1], key_dim, generator=g), dim=1)
    bank.write(key.to(device, torch.float16), torch.zeros(key.shape[0], 1, 1, device=device),
               torch.zeros(key.shape[0], 1, device=device), pinned=True, stamp=0)
    affinity = AffinityConfig(top_k=4)
    for dtype in value_dtypes:
        bank.values, bank.masks = bank.values.to(dtype), bank.masks.to(dtype)
        bank.read(key.to(device, torch.float16), affinity)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return bank.affinity_path(affinity)


def cuda_unavailable() -> str | None:
    """Why the fast tracker cannot run here, or None."""
    if not torch.cuda.is_available():
        return f"needs a CUDA GPU (torch {torch.__version__} sees none)"
    return None


def _cudnn_autotuning() -> contextlib.AbstractContextManager[None]:
    """cuDNN's benchmark mode (autotuned convolutions for the fixed shapes) for the fast tracker's
    own calls only: torch's flags context restores the process-wide setting on exit, and every
    other flag (None) is left as it is."""
    params = inspect.signature(torch.backends.cudnn.flags).parameters
    return torch.backends.cudnn.flags(**{**dict.fromkeys(params), "benchmark": True})


@dataclass(frozen=True)
class FastOptions:
    """Each optimisation can be switched off, to measure what it brings. (Which affinity code runs
    is TrackerConfig.affinity_impl.)"""

    fp16: bool = True
    cuda_graphs: bool = True
    pinned_uploads: bool = True
    channels_last: bool = True

    @property
    def needs_cuda(self) -> bool:
        return self.fp16 or self.cuda_graphs or self.pinned_uploads

    @classmethod
    def eager_cpu(cls) -> FastOptions:
        """Every CUDA feature off: fp32, eager, pageable, contiguous (runs on the CPU too)."""
        return cls(fp16=False, cuda_graphs=False, pinned_uploads=False, channels_last=False)


class _Stage:
    """A function over fixed buffers, replayed as a CUDA graph once captured (eager before)."""

    def __init__(self, name: str, fn: Callable[[], Any]) -> None:
        self.name, self.fn = name, fn
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Any = None

    def capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: cuDNN autotuning, lazy inits
            for _ in range(2):
                self.out = self.fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self.fn()
        self.graph = graph

    def __call__(self) -> Any:
        if self.graph is None:
            self.out = self.fn()
        else:
            self.graph.replay()
        return self.out


class FastTracker:
    """See the module docstring. model: any MevosNet (copied, cast, never modified)."""

    def __init__(self, model: MevosNet, config: TrackerConfig | None = None, device: str | torch.device = "cuda",
                 options: FastOptions | None = None) -> None:
        self.options = options or FastOptions()
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        reason = cuda_unavailable() if self.cuda or self.options.needs_cuda else None
        if reason:
            raise UsageError(f"the fast tracker {reason}; use mevos.runtime.Tracker on the CPU")
        if not self.cuda and self.options.needs_cuda:
            raise UsageError(f"fp16, CUDA graphs and pinned uploads need a CUDA device, not {self.device}")
        self.config = config or TrackerConfig()
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = torch.float16 if self.options.fp16 else torch.float32
        fmt = torch.channels_last if self.options.channels_last else torch.contiguous_format
        model = copy.deepcopy(model).to(self.device, self.dtype)
        self.model = model.to(memory_format=fmt).eval()  # type: ignore[call-overload]  # stubs lack memory_format
        self.copy_stream = torch.cuda.Stream(self.device) if self.options.pinned_uploads else None
        self.graph_error: str | None = None
        self.frame_index = 0
        self.memory: MemoryBank | None = None
        self._started = False
        self._clock: StageClock | None = None

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(self.ids) if self._started else ()

    # -- set-up on the first frame ----------------------------------------------------------------

    def _allocate(self, size: tuple[int, int], object_ids: list[int]) -> None:
        cfg, mc, dev, dt = self.config, self.model.config, self.device, self.dtype
        self.geo = cfg.geometry(size)
        self.ids = object_ids
        h, w = self.geo.grid
        self.P, self.O = h * w, len(object_ids)
        # The Tracker's memory bank and slot policy (the first frame pinned, then a ring of
        # mem_frames), so a Tracker can take the session over (to_tracker) and pin more frames.
        self.memory = MemoryBank(cfg.mem_frames, cfg.max_pinned, (h, w), mc.key_dim, mc.value_dim, dev, dt)
        self.memory.add_objects(object_ids)
        pin = self.options.pinned_uploads
        self.host_in = [torch.empty(*size, 3, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
        self.dev_in = [torch.empty(*size, 3, dtype=torch.uint8, device=dev) for _ in range(2)]
        self.uploaded = [torch.cuda.Event() for _ in range(2)] if pin else []
        self.consumed = [torch.cuda.Event() for _ in range(2)] if pin else []
        self.in_slot = 0
        self.frame_u8 = torch.zeros(*size, 3, dtype=torch.uint8, device=dev)
        self.rd_values = torch.zeros(self.O, mc.value_dim, self.P, device=dev)
        self.rd_masks = torch.zeros(self.O, self.P, device=dev)
        self.probs = torch.zeros(self.O, 1, *self.geo.padded, device=dev)
        self.lut = torch.tensor([0, *object_ids], dtype=torch.uint8, device=dev)
        self.host_out = [torch.empty(*size, dtype=torch.uint8, pin_memory=pin) for _ in range(HOST_SLOTS)]
        self.dev_probs = [torch.empty(self.O, *size, device=dev) for _ in range(HOST_SLOTS)]
        self.out_events = [torch.cuda.Event() for _ in range(HOST_SLOTS)] if self.cuda else []
        # The fused kernels OR errors into one device flag instead of waiting for the device; it
        # comes back with the frame's labels and is read once, when they are.
        self.error_flag = torch.zeros(1, dtype=torch.int32, device=dev) if self.cuda else None
        self.host_flags = [torch.zeros(1, dtype=torch.int32, pin_memory=pin) for _ in range(HOST_SLOTS)]
        self.key_stage = _Stage("encode_key", self._encode_key)
        self.refine_stage = _Stage("refine", self._refine)
        self.memory_stage = _Stage("memory_write", self._memory_entry)
        self.post_stage = _Stage("postprocess", self._labels)

    def _capture(self, stage: _Stage) -> None:
        """Capture `stage` as a CUDA graph (when asked for). A failure turns every stage eager:
        eager and captured stages would not share their fixed buffers."""
        if not self.options.cuda_graphs or self.graph_error is not None:
            return
        try:
            stage.capture()
        except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly, say why
            self.graph_error = f"{stage.name}: {type(exc).__name__}: {exc}"
            warnings.warn(f"CUDA graph capture failed ({self.graph_error}); running eagerly", RuntimeWarning,
                          stacklevel=3)
            torch.cuda.synchronize(self.device)
            for s in (self.key_stage, self.refine_stage, self.memory_stage, self.post_stage):
                s.graph = None

    @property
    def graphs_active(self) -> bool:
        return self._started and all(s.graph is not None for s in
                                     (self.key_stage, self.refine_stage, self.memory_stage, self.post_stage))

    @property
    def used(self) -> int:
        """Memory slots in use."""
        return self.memory.used if self.memory is not None else 0

    # -- the stages, over fixed buffers ----------------------------------------------------------

    def _encode_key(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.geo.image(self.frame_u8, self.device, self.dtype)
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        key, res3, res2 = self.model.encode_key(x)
        query = stages.query_of(key).to(self.dtype).contiguous()
        return x, query, res3, res2

    def _refine(self) -> Tensor:
        image, _, res3, res2 = self.key_stage.out
        h, w = self.geo.grid
        readout = self.rd_values.view(self.O, -1, h, w)
        coarse = self.rd_masks.view(self.O, 1, h, w)
        probs = stages.refine(self.model, image, readout, stages.upsample(coarse, self.geo), res3, res2,
                              self.config.refine_rounds)
        self.probs.copy_(probs)
        return self.probs

    def _final_masks(self) -> Tensor:
        """O x H'' x W'': what enters the memory (as the Tracker: the label map when memory_masks
        is 'hard', else the probabilities)."""
        p = self.probs[:, 0]
        if self.config.memory_masks == "hard":
            return stages.label_masks(stages.distribution(p, self.config.refine_rounds > 0)).to(p.dtype)
        return p

    def _memory_entry(self) -> tuple[Tensor, Tensor]:
        return stages.memory_entry(self.model, self.key_stage.out[0], self._final_masks())

    def _labels(self) -> tuple[Tensor, Tensor]:
        full = self.geo.to_input(stages.distribution(self.probs[:, 0], self.config.refine_rounds > 0))
        return stages.label_map(full, self.lut), full[1:]

    # -- per frame -------------------------------------------------------------------------------

    def _upload(self, frame: np.ndarray) -> None:
        s = self.in_slot
        self.in_slot ^= 1
        if self.copy_stream is not None:
            cur = torch.cuda.current_stream(self.device)
            self.uploaded[s].synchronize()  # the copy from this buffer two frames ago is done
            np.copyto(self.host_in[s].numpy(), frame)
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(self.consumed[s])
                self.dev_in[s].copy_(self.host_in[s], non_blocking=True)
                self.uploaded[s].record(self.copy_stream)
            cur.wait_event(self.uploaded[s])
            self.frame_u8.copy_(self.dev_in[s])
            self.consumed[s].record(cur)
        else:
            self.frame_u8.copy_(torch.from_numpy(np.require(frame, requirements=("C", "W"))))

    def _write_memory(self, pinned: bool) -> None:
        assert self.memory is not None
        values, masks = self.memory_stage.out
        self.memory.write(self.key_stage.out[1], values, masks, pinned=pinned, stamp=self.frame_index)

    def _finish(self, labels: Tensor, probs: Tensor, t0: float) -> FrameResult:
        i, index = self.frame_index % HOST_SLOTS, self.frame_index
        self.host_out[i].copy_(labels, non_blocking=self.cuda)
        self.dev_probs[i].copy_(probs)
        if self.error_flag is not None:
            self.host_flags[i].copy_(self.error_flag, non_blocking=True)
            self.error_flag.zero_()
        event = None
        if self.cuda:
            event = self.out_events[i]
            event.record(torch.cuda.current_stream(self.device))
        host, dev_probs, flag = self.host_out[i], self.dev_probs[i], self.host_flags[i]

        def fetch() -> tuple[np.ndarray, np.ndarray]:
            if event is not None:
                event.synchronize()
            if int(flag[0]):
                from mevos.kernels.fused import error_message

                raise UsageError(error_message(f" in frame {index}"))
            return host.numpy().copy(), dev_probs.float().cpu().numpy()

        mark(self._clock, "postprocess")
        result = FrameResult(self.frame_index, None, None, tuple(self.ids), seconds=time.perf_counter() - t0,
                             stages=self._clock.ms if self._clock is not None else None, fetch=fetch)
        self.frame_index += 1
        return result

    @torch.inference_mode()
    def step(self, frame: np.ndarray, masks: np.ndarray | None = None, remove: tuple[int, ...] | list[int] = (),
             profile: bool = False) -> FrameResult:
        """Queue one frame (H x W x 3 uint8); masks (H x W ids) on the first frame only; remove
        must be empty (to_tracker hands over a session that needs either).

        profile: synchronise the device at every stage boundary and put each stage's milliseconds
        in the result's `stages` (a breakdown run; leave False for throughput)."""
        with _cudnn_autotuning() if self.cuda else contextlib.nullcontext():
            return self._step(frame, masks, remove, profile)

    def _step(self, frame: np.ndarray, masks: np.ndarray | None, remove: tuple[int, ...] | list[int],
              profile: bool) -> FrameResult:
        t0 = time.perf_counter()
        self._clock = StageClock(self.device) if profile else None
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"a frame must be H x W x 3 uint8 RGB, got {frame.shape} {frame.dtype}")
        if not self._started:
            if masks is None:
                raise InputError("the first frame of a session needs a mask with at least one object")
            return self._start(frame, np.asarray(masks), t0)
        if masks is not None or remove:
            raise UsageError("the fast tracker takes masks on the first frame only; hand the session over to a "
                             "Tracker (to_tracker) to add, correct or remove objects")
        if tuple(frame.shape[:2]) != self.geo.size:
            raise InputError(f"frame size {frame.shape[0]}x{frame.shape[1]} differs from the session's "
                             f"{self.geo.size[0]}x{self.geo.size[1]}")
        assert self.memory is not None
        self._upload(frame)
        mark(self._clock, "upload")
        self.key_stage()
        mark(self._clock, "encode_key")
        stages.read_memory(self.memory, self.key_stage.out[1], self.config.affinity, (self.rd_values, self.rd_masks),
                           self._clock, self.error_flag)
        self.refine_stage()
        mark(self._clock, "refine")
        self.memory_stage()
        self._write_memory(pinned=False)
        mark(self._clock, "memory_write")
        labels, probs = self.post_stage()
        return self._finish(labels, probs, t0)

    def _start(self, frame: np.ndarray, labels: np.ndarray, t0: float) -> FrameResult:
        if labels.shape != frame.shape[:2]:
            raise InputError(f"mask size {labels.shape} differs from the frame size {frame.shape[:2]}")
        ids = [int(i) for i in np.unique(labels) if i != 0]
        if not ids:
            raise InputError("the mask has no object (every pixel is 0 = background)")
        if len(ids) > self.config.max_objects:
            raise InputError(f"too many objects: {len(ids)} > max_objects {self.config.max_objects}")
        self._allocate((int(frame.shape[0]), int(frame.shape[1])), ids)
        self._upload(frame)
        self._capture(self.key_stage)
        self.key_stage()
        given = torch.as_tensor(labels).to(self.device, torch.int64)
        self.probs.copy_(self.geo.masks(given, ids))  # O x 1 x H'' x W'' one-hot
        self._capture(self.memory_stage)
        self.memory_stage()
        self._write_memory(pinned=True)
        # Captured now so that no capture happens mid-stream; their warm-up overwrites probs,
        # which frame 0 no longer needs.
        self._capture(self.refine_stage)
        self._capture(self.post_stage)
        self._started = True
        host = np.asarray(labels, dtype=np.uint8)  # frame 0's answer is the given mask, as given
        probs = np.stack([host == i for i in ids]).astype(np.float32)
        self.frame_index += 1
        return FrameResult(0, host, probs, tuple(ids), seconds=time.perf_counter() - t0)

    def to_tracker(self, backend: Backend) -> Tracker:
        """A Tracker that continues this session (same memory, geometry and frame count) on
        `backend`, for what the fast tracker does not do: objects added, corrected or removed."""
        if not self._started:
            raise UsageError("the session has not started: create a Tracker directly")
        tracker = Tracker(backend, self.config)
        tracker.geometry, tracker.memory, tracker.frame_index = self.geo, self.memory, self.frame_index
        return tracker
