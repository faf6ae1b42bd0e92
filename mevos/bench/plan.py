"""What a benchmark run measures: the variants (backend + precision + affinity) and the grid.

Three named plans: `full` (the issue's whole grid, meant for a CUDA GPU), `quick` (a CPU-sized
subset that runs in minutes on two cores) and `tiny` (the test suite's: seconds). The CLI starts
from one of them and overrides fields from its options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mevos.errors import UsageError

#: name -> (height, width) of the frames; DAVIS 480p is 854 x 480.
RESOLUTIONS: dict[str, tuple[int, int]] = {"240p": (240, 427), "480p": (480, 854), "720p": (720, 1280)}


def parse_resolution(name: str) -> tuple[int, int]:
    """'480p' or 'WxH' (e.g. '64x48') -> (height, width)."""
    if name in RESOLUTIONS:
        return RESOLUTIONS[name]
    try:
        w, h = (int(v) for v in name.lower().split("x"))
    except ValueError:
        raise UsageError(f"resolution {name!r}: use one of {', '.join(RESOLUTIONS)} or WxH like 64x48") from None
    if h < 16 or w < 16:
        raise UsageError(f"resolution {name!r}: frames must be at least 16x16")
    return h, w


@dataclass(frozen=True)
class Variant:
    """One way of running the model. backend: a create_backend name, or 'fast' (the fast
    tracker); precision: the backend's; affinity: TrackerConfig.affinity_impl ('auto': the fused
    kernels on CUDA, the chunked reference elsewhere; 'dense': the materialised P x T*P affinity)."""

    name: str
    backend: str
    precision: str
    affinity: str
    description: str
    gpu_only: bool = False


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline", "torch", "fp32", "dense",
            "the paper's code path: fp32 PyTorch, dense (materialised) affinity; every ratio divides by it"),
    Variant("torch", "torch", "auto", "auto", "PyTorch backend (fp16 autocast on CUDA), affinity 'auto'"),
    Variant("onnxruntime", "onnxruntime", "auto", "auto", "ONNX Runtime (CPU or CUDA EP, fp32 graphs), affinity 'auto'"),
    Variant("onnxruntime-trt", "onnxruntime-trt", "auto", "auto", "ONNX Runtime TensorRT EP (fp16), affinity 'auto'",
            gpu_only=True),
    Variant("tensorrt", "tensorrt", "auto", "auto", "native TensorRT engines (fp16), affinity 'auto'", gpu_only=True),
    Variant("fast", "fast", "fp16", "auto",
            "the fast tracker: fp16 throughout, fused kernels, CUDA graphs, pinned overlapped uploads", gpu_only=True),
)}


@dataclass(frozen=True)
class BenchPlan:
    """The grid. Stage latencies cover presets x resolutions x objects x mem_frames for every
    variant; end-to-end FPS (the real Tracker on the synthetic video) covers the e2e_* subset;
    serving streams one configuration through an in-process gRPC server; fast_* is the GPU
    fast path's goal configuration and its J&F check against the fp32 baseline."""

    mode: str
    presets: tuple[str, ...]
    resolutions: tuple[str, ...]
    objects: tuple[int, ...]
    mem_frames: tuple[int, ...]
    variants: tuple[str, ...]
    refine_rounds: int = 2
    warmup: int = 2
    repeat: int = 10
    stage_extra: tuple[tuple[str, int, int], ...] = ()  # (resolution, objects, mem_frames) beyond the product
    budget_s: float | None = None  # per stage measurement: fewer repetitions past it (measure.Iterations)
    e2e_resolutions: tuple[str, ...] = ()
    e2e_objects: tuple[int, ...] = ()
    e2e_mem_frames: tuple[int, ...] = ()
    e2e_frames: int = 30  # timed frames; warm-up = mem_frames + 2 frames before them (memory full)
    grpc: bool = True
    grpc_resolution: str = "240p"
    grpc_objects: int = 1
    grpc_mem_frames: int = 5
    grpc_frames: int = 20  # timed frames per stream (two lock-step rounds), after mem_frames + 2 warm-up frames
    grpc_pipelined: bool = True  # also stream with the client's window (throughput), not only lock-step
    fast: bool = True
    fast_presets: tuple[str, ...] = ("r18",)
    fast_resolution: str = "480p"
    fast_objects: int = 1
    fast_mem_frames: int = 20
    fast_frames: int = 200
    jf_check: bool = True
    jf_sequences: tuple[str, ...] = ()  # empty: every sequence of the folder
    # CPU threads of torch and ONNX Runtime; None = their defaults. On a CPU shared with other
    # work, one thread: two OpenMP threads that wait at every op's barrier for a descheduled
    # partner run 10-50x slower than one.
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for r in (*self.resolutions, *self.e2e_resolutions, self.grpc_resolution, self.fast_resolution,
                  *(e[0] for e in self.stage_extra)):
            parse_resolution(r)
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise UsageError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
        if min(self.objects + self.e2e_objects + (self.grpc_objects, self.fast_objects), default=1) < 1:
            raise UsageError("object counts must be >= 1")
        if min(self.mem_frames + self.e2e_mem_frames + (self.grpc_mem_frames,), default=0) < 0:
            raise UsageError("memory frame counts must be >= 0")
        if self.warmup < 0 or self.repeat < 1 or self.e2e_frames < 1 or self.grpc_frames < 1:
            raise UsageError("need warmup >= 0, repeat >= 1 and at least one timed frame")
        if self.refine_rounds < 0:
            raise UsageError("refine_rounds must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise UsageError("threads must be >= 1 (or None for the libraries' defaults)")

    def stage_configs(self) -> dict[tuple[str, int], tuple[int, ...]]:
        """(resolution, objects) -> memory frame counts: the product grid plus stage_extra."""
        out: dict[tuple[str, int], set[int]] = {}
        for r in self.resolutions:
            for o in self.objects:
                out.setdefault((r, o), set()).update(self.mem_frames)
        for r, o, m in self.stage_extra:
            out.setdefault((r, o), set()).add(m)
        return {k: tuple(sorted(v)) for k, v in out.items() if v}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
                for k, v in d.items()}

    def replace(self, **changes: Any) -> BenchPlan:
        return dataclasses.replace(self, **changes)


def full_plan() -> BenchPlan:
    """The issue's grid: 240p/480p/720p x 1/4 objects x 5/20 memory frames, every backend, r18."""
    return BenchPlan(
        mode="full", presets=("r18",), resolutions=("240p", "480p", "720p"), objects=(1, 4), mem_frames=(5, 20),
        variants=("baseline", "torch", "onnxruntime", "onnxruntime-trt", "tensorrt", "fast"),
        warmup=3, repeat=20,
        e2e_resolutions=("240p", "480p", "720p"), e2e_objects=(1, 4), e2e_mem_frames=(5, 20), e2e_frames=60,
        grpc_resolution="480p", grpc_mem_frames=20, grpc_frames=60,
        fast_presets=("r18", "small"), fast_frames=300,
    )


def quick_plan() -> BenchPlan:
    """CPU-sized: small preset; stages at 240p x 1/4 objects x 5/20 memory frames plus 480p with
    1 object and 5 memory frames; end to end and gRPC at 240p, 1 object, 5 memory frames; torch
    and onnxruntime against the baseline. One thread, a 5 s budget per stage measurement."""
    return BenchPlan(
        mode="quick", presets=("small",), resolutions=("240p",), objects=(1, 4), mem_frames=(5, 20),
        stage_extra=(("480p", 1, 5),), variants=("baseline", "torch", "onnxruntime"), warmup=2, repeat=5,
        budget_s=5.0, e2e_resolutions=("240p",), e2e_objects=(1,), e2e_mem_frames=(5,), e2e_frames=8,
        grpc_resolution="240p", grpc_objects=1, grpc_mem_frames=5, grpc_frames=8, grpc_pipelined=True,
        fast=False, jf_check=False, threads=1,
    )


def tiny_plan() -> BenchPlan:
    """The test suite's: 64x48 frames, 1 object, 2 memory frames, torch only, one iteration."""
    return BenchPlan(
        mode="tiny", presets=("small",), resolutions=("64x48",), objects=(1,), mem_frames=(2,),
        variants=("baseline", "torch"), refine_rounds=1, warmup=1, repeat=1,
        e2e_resolutions=("64x48",), e2e_objects=(1,), e2e_mem_frames=(2,), e2e_frames=2,
        grpc_resolution="64x48", grpc_objects=1, grpc_mem_frames=2, grpc_frames=2, grpc_pipelined=False,
        fast=False, jf_check=False, threads=1,
    )


PLANS = {"full": full_plan, "quick": quick_plan, "tiny": tiny_plan}
