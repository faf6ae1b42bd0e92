"""The GPU fast path: one fixed-shape tracking session on a CUDA device, built for throughput.

Same math as mevos.runtime.Tracker (Algorithm 1, soft aggregation, pinned first frame plus a
ring of `mem_frames` recent frames, in the same slot order, so the top-k sees the same indices),
run differently:

- fp16 weights, activations and memory (soft aggregation and the readouts accumulate in fp32);
- top-k affinity and readout through mevos.kernels.ops, i.e. the fused CUDA kernels;
- the fixed-shape stages captured once as CUDA graphs and replayed every frame: encode_key
  (with the uint8 -> float conversion and padding), the R refinement rounds, the memory
  encoding, the label map; only the affinity and the readouts (whose memory length grows while
  the ring fills) and three slot copies run eagerly;
- frames go up from pinned host buffers on a copy stream, so frame t+1's upload overlaps frame
  t's compute; label maps come back into pinned buffers, read one frame later;
- nothing in this module waits for the device inside a frame. (The fused ops read one error flag
  per call; the benchmark counts those synchronisations.)

    fast = FastTracker(model, TrackerConfig(mem_frames=20), device="cuda")
    prev = fast.step(frame0, masks=labels0)
    for frame in frames:
        cur = fast.step(frame)
        labels = prev.labels()        # frame t-1's H x W uint8, ready by now
        prev = cur

Limits, by design: one frame size and one set of objects, fixed by the first frame (no objects
added, corrected or removed later), frames processed at their own resolution (no short_side),
at most HOST_SLOTS - 1 results outstanding. Everything else is the regular Tracker's job.
Without CUDA, constructing one raises UsageError saying so, except with every CUDA feature
switched off (FastOptions.eager_cpu()): the same code then runs eagerly in fp32 on the CPU,
which is how the tests check its math against the Tracker's on a machine without a GPU.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mevos.errors import InputError, UsageError
from mevos.kernels import ops, reference
from mevos.kernels.reference import label_masks, soft_aggregate, with_background
from mevos.model.network import MevosNet
from mevos.runtime.geometry import STRIDE, Geometry
from mevos.runtime.tracker import TrackerConfig

HOST_SLOTS = 3  # pinned label buffers: results may be read up to two frames late
STAGES = ("upload", "encode_key", "affinity_topk", "readout", "refine", "memory_write", "postprocess")


def cuda_unavailable() -> str | None:
    """Why the fast path cannot run here, or None."""
    if not torch.cuda.is_available():
        return f"needs a CUDA GPU (torch {torch.__version__} sees none)"
    return None


@dataclass(frozen=True)
class FastOptions:
    """Each optimisation can be switched off, to measure what it brings."""

    fp16: bool = True
    fused: bool = True  # False: the PyTorch reference ops (on the GPU)
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


class FastResult:
    """One frame's label map, on its way to the host. labels() waits for it (H x W uint8)."""

    def __init__(self, index: int, host: Tensor | np.ndarray, event: torch.cuda.Event | None) -> None:
        self.index, self._host, self._event = index, host, event

    def labels(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy().copy() if isinstance(self._host, Tensor) else self._host.copy()


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
            raise UsageError(f"the GPU fast path {reason}; use mevos.runtime.Tracker on the CPU")
        if not self.cuda and self.options.needs_cuda:
            raise UsageError(f"fp16, CUDA graphs and pinned uploads need a CUDA device, not {self.device}")
        self.config = config or TrackerConfig()
        if self.config.short_side is not None:
            raise UsageError("the fast path runs frames at their own size; resize them first (short_side=None)")
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = torch.float16 if self.options.fp16 else torch.float32
        fmt = torch.channels_last if self.options.channels_last else torch.contiguous_format
        model = copy.deepcopy(model).to(self.device, self.dtype)
        self.model = model.to(memory_format=fmt).eval()  # type: ignore[call-overload]  # stubs lack memory_format
        torch.backends.cudnn.benchmark = True
        self.copy_stream = torch.cuda.Stream(self.device) if self.options.pinned_uploads else None
        self.graph_error: str | None = None
        self.frame_index = 0
        self._started = False
        self._profile: dict[str, float] | None = None
        self._last = 0.0

    # -- set-up on the first frame ----------------------------------------------------------------

    def _allocate(self, size: tuple[int, int], object_ids: list[int]) -> None:
        cfg, mc, dev, dt = self.config, self.model.config, self.device, self.dtype
        self.geo = Geometry.for_size(size, None)
        self.ids = object_ids
        h, w = self.geo.grid
        self.P, self.O = h * w, len(object_ids)
        self.slots = 1 + cfg.mem_frames
        self.mem_keys = torch.zeros(self.slots, self.P, mc.key_dim, device=dev, dtype=dt)
        self.mem_values = torch.zeros(self.slots, self.P, self.O * mc.value_dim, device=dev, dtype=dt)
        self.mem_masks = torch.zeros(self.slots, self.P, self.O, device=dev, dtype=dt)
        self.pinned = torch.zeros(self.slots, dtype=torch.bool)  # host: read by the ops without a sync
        self.stamp = [0] * self.slots
        self.used = 0
        pin = self.options.pinned_uploads
        self.host_in = [torch.empty(*size, 3, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
        self.dev_in = [torch.empty(*size, 3, dtype=torch.uint8, device=dev) for _ in range(2)]
        self.uploaded = [torch.cuda.Event() for _ in range(2)] if pin else []
        self.consumed = [torch.cuda.Event() for _ in range(2)] if pin else []
        self.in_slot = 0
        self.frame_u8 = torch.zeros(*size, 3, dtype=torch.uint8, device=dev)
        self.rd_values = torch.zeros(self.P, self.O * mc.value_dim, device=dev)
        self.rd_masks = torch.zeros(self.P, self.O, device=dev)
        self.probs = torch.zeros(self.O, 1, *self.geo.padded, device=dev)
        self.lut = torch.tensor([0, *object_ids], dtype=torch.uint8, device=dev)
        self.host_out = [torch.empty(*size, dtype=torch.uint8, pin_memory=pin) for _ in range(HOST_SLOTS)]
        self.out_events = [torch.cuda.Event() for _ in range(HOST_SLOTS)] if self.cuda else []
        self.key_stage = _Stage("encode_key", self._encode_key)
        self.refine_stage = _Stage("refine", self._refine)
        self.memory_stage = _Stage("memory_write", self._encode_memory)
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

    # -- the stages, over fixed buffers ----------------------------------------------------------

    def _encode_key(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.frame_u8.permute(2, 0, 1).unsqueeze(0).to(self.dtype) / 255.0
        ph, pw = self.geo.padded[0] - self.geo.size[0], self.geo.padded[1] - self.geo.size[1]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        key, res3, res2 = self.model.encode_key(x)
        query = key[0].permute(1, 2, 0).reshape(self.P, -1).to(self.dtype).contiguous()
        return x, query, res3, res2

    def _refine(self) -> Tensor:
        image, _, res3, res2 = self.key_stage.out
        h, w = self.geo.grid
        o = self.O
        readout = self.rd_values.view(self.P, o, -1).permute(1, 2, 0).reshape(o, -1, h, w).to(self.dtype)
        coarse = self.rd_masks.t().reshape(o, 1, h, w)
        probs = F.interpolate(coarse, size=self.geo.padded, mode="bilinear", align_corners=False).clamp(0, 1)
        for _ in range(self.config.refine_rounds):
            value = self.model.encode_value(image, probs.to(self.dtype))
            logits = self.model.decode(readout, value, res3, res2)
            probs = soft_aggregate(torch.sigmoid(logits.float())[:, 0])[1:].unsqueeze(1)
        self.probs.copy_(probs)
        return self.probs

    def _encode_memory(self) -> tuple[Tensor, Tensor]:
        image = self.key_stage.out[0]
        probs = self.probs
        if self.config.memory_masks == "hard":
            # As the Tracker: a predicted frame is memorised with its label map (one-hot).
            p = probs[:, 0]
            dist = with_background(p) if self.config.refine_rounds > 0 else soft_aggregate(p)
            probs = label_masks(dist).unsqueeze(1).to(probs.dtype)
        values = self.model.encode_value(image, probs.to(self.dtype))  # O x Cv x h x w
        small = F.avg_pool2d(probs, STRIDE)[:, 0]  # O x h x w
        v = values.permute(2, 3, 0, 1).reshape(self.P, -1).to(self.dtype).contiguous()
        m = small.reshape(self.O, self.P).t().to(self.dtype).contiguous()
        return v, m

    def _labels(self) -> Tensor:
        p = self.probs[:, 0]
        full = self.geo.to_input(with_background(p) if self.config.refine_rounds > 0 else soft_aggregate(p))
        return self.lut[full.argmax(dim=0)]

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

    def _read_memory(self) -> None:
        n, cfg = self.used, self.config
        query = self.key_stage.out[1]
        topk, read = (ops.topk_affinity, ops.readout) if self.options.fused else \
            (reference.topk_affinity, reference.readout)
        weights, indices = topk(query, self.mem_keys[:n], k=min(cfg.top_k, n * self.P), temperature=cfg.temperature,
                                grid=self.geo.grid, pinned=self.pinned[:n], radius=cfg.radius,
                                chunk_size=cfg.chunk_size)
        self._mark("affinity_topk")
        self.rd_values.copy_(read(weights, indices, self.mem_values[:n].view(n * self.P, -1)))
        self.rd_masks.copy_(read(weights, indices, self.mem_masks[:n].view(n * self.P, -1)))

    def _write_memory(self, pinned: bool) -> None:
        """Same slot policy as MemoryBank (pinned slot 0, then a ring), so the indices agree."""
        if self.used < self.slots:
            slot = self.used
            self.used += 1
        else:
            slot = min((s for s in range(self.slots) if not bool(self.pinned[s])), key=lambda s: self.stamp[s])
        values, masks = self.memory_stage.out
        self.mem_keys[slot].copy_(self.key_stage.out[1])
        self.mem_values[slot].copy_(values)
        self.mem_masks[slot].copy_(masks)
        self.pinned[slot] = pinned
        self.stamp[slot] = self.frame_index

    def _finish(self, labels: Tensor) -> FastResult:
        i = self.frame_index % HOST_SLOTS
        self.host_out[i].copy_(labels, non_blocking=self.cuda)
        event = None
        if self.cuda:
            event = self.out_events[i]
            event.record(torch.cuda.current_stream(self.device))
        result = FastResult(self.frame_index, self.host_out[i], event)
        self.frame_index += 1
        return result

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _mark(self, stage: str) -> None:
        """With a profile dict: synchronise and charge the time since the last mark to `stage`."""
        if self._profile is not None:
            self._sync()
            now = time.perf_counter()
            self._profile[stage] = self._profile.get(stage, 0.0) + (now - self._last) * 1e3
            self._last = now

    @torch.inference_mode()
    def step(self, frame: np.ndarray, masks: np.ndarray | None = None,
             profile: dict[str, float] | None = None) -> FastResult:
        """Queue one frame (H x W x 3 uint8); masks (H x W ids) on the first frame only.

        profile: when given, the device is synchronised at every stage boundary and each stage's
        milliseconds are added to it (a breakdown run; leave None for throughput)."""
        self._profile = profile
        if profile is not None:
            self._sync()
            self._last = time.perf_counter()
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"a frame must be H x W x 3 uint8 RGB, got {frame.shape} {frame.dtype}")
        if not self._started:
            if masks is None:
                raise InputError("the first frame of a session needs a mask with at least one object")
            return self._start(frame, np.asarray(masks))
        if masks is not None:
            raise UsageError("the fast path takes masks on the first frame only; use the Tracker to add or correct")
        if tuple(frame.shape[:2]) != self.geo.size:
            raise InputError(f"frame size {frame.shape[0]}x{frame.shape[1]} differs from the session's "
                             f"{self.geo.size[0]}x{self.geo.size[1]}")
        self._upload(frame)
        self._mark("upload")
        self.key_stage()
        self._mark("encode_key")
        self._read_memory()
        self._mark("readout")
        self.refine_stage()
        self._mark("refine")
        self.memory_stage()
        self._write_memory(pinned=False)
        self._mark("memory_write")
        result = self._finish(self.post_stage())
        self._mark("postprocess")
        return result

    def _start(self, frame: np.ndarray, labels: np.ndarray) -> FastResult:
        if labels.shape != frame.shape[:2]:
            raise InputError(f"mask size {labels.shape} differs from the frame size {frame.shape[:2]}")
        ids = [int(i) for i in np.unique(labels) if i != 0]
        if not ids:
            raise InputError("the mask has no object (every pixel is 0 = background)")
        self._allocate((int(frame.shape[0]), int(frame.shape[1])), ids)
        self._upload(frame)
        self._capture(self.key_stage)
        self.key_stage()
        given = torch.as_tensor(labels).to(self.device, torch.int64)
        onehot = self.geo.masks(given, ids)  # O x 1 x H'' x W''
        self.probs.copy_(onehot)
        self._capture(self.memory_stage)
        self.memory_stage()
        self._write_memory(pinned=True)
        # Captured now so that no capture happens mid-stream; their warm-up overwrites probs,
        # which frame 0 no longer needs.
        self._capture(self.refine_stage)
        self._capture(self.post_stage)
        self._started = True
        host = np.asarray(labels, dtype=np.uint8)  # frame 0's answer is the given mask, as given
        self.frame_index += 1
        return FastResult(0, host, None)
