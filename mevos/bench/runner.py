"""Runs a BenchPlan: builds each variant's backend once, measures stages, end-to-end FPS,
serving and the GPU fast path, and returns the results document (see mevos.bench.schema)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mevos.bench import environment, schema
from mevos.bench.endtoend import run_tracker, warmup_frames
from mevos.bench.measure import DevicePeak, HostPeak, Meters
from mevos.bench.plan import VARIANTS, BenchPlan, Variant, parse_resolution
from mevos.bench.stages import compose, frame_ms, primed_tracker, time_frame
from mevos.bench.workload import fill_memory, video
from mevos.errors import MevosError
from mevos.model.network import MevosNet
from mevos.runtime.backend import Backend, create_backend
from mevos.runtime.tracker import TrackerConfig

Log = Callable[[str], None]
#: Failures that make a variant unavailable here (missing extra, no engine, no GPU, ...).
_UNAVAILABLE = (MevosError, ImportError, RuntimeError, OSError, ValueError)


def _precision(variant: Variant, device: torch.device) -> str:
    """The precision a variant actually runs at on `device` (torch 'auto' = fp32 on the CPU)."""
    if variant.precision != "auto":
        return variant.precision
    if device.type != "cuda":
        return "fp32"
    return "fp32" if variant.backend == "onnxruntime" else "fp16"


class _Models:
    """Weights per preset: the given checkpoint, the default weights for `small`, else seeded
    weights of the preset saved once under the cache (the ONNX/TensorRT backends need a file)."""

    def __init__(self, checkpoint: str | None) -> None:
        self.checkpoint = checkpoint

    def presets(self, wanted: tuple[str, ...]) -> tuple[str, ...]:
        if self.checkpoint is None:
            return wanted
        from mevos.model.checkpoint import read_checkpoint

        return (str(read_checkpoint(self.checkpoint)["config"]["name"]),)

    def path(self, preset: str) -> str | None:
        if self.checkpoint is not None or preset == "small":
            return self.checkpoint
        from mevos.env import cache_dir
        from mevos.model import build_model, preset as preset_config, save_checkpoint

        path = cache_dir() / "bench" / f"{preset}-seed0.pt"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, build_model(preset_config(preset), seed=0),
                            metadata={"source": f"seeded untrained {preset} weights for benchmarks"})
        return str(path)

    def model(self, preset: str) -> MevosNet:
        from mevos.model.weights import load_default_model

        return load_default_model(self.path(preset))[0]

    def describe(self, preset: str) -> str:
        from mevos.model.weights import describe_weights

        if self.checkpoint is None and preset != "small":
            return f"seeded untrained {preset} weights (speed does not depend on the weights)"
        return describe_weights(self.checkpoint)


class Runner:
    def __init__(self, plan: BenchPlan, device: torch.device, checkpoint: str | None = None,
                 davis: Path | None = None, log: Log | None = None) -> None:
        self.plan, self.device, self.davis = plan, device, davis
        self.models = _Models(checkpoint)
        self.log_fn = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.t0 = time.perf_counter()
        self.cpu0 = environment.cpu_seconds()
        self.skipped: list[dict[str, Any]] = []
        self.tracker_base = TrackerConfig(refine_rounds=plan.refine_rounds)

    def log(self, msg: str) -> None:
        self.log_fn(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}")

    # -- backends -------------------------------------------------------------------------------

    def _backends(self, preset: str) -> dict[str, Backend | str]:
        """variant -> backend ('fast' for the fast path); unavailable ones go to self.skipped.
        Variants with the same backend and precision share one instance."""
        out: dict[str, Backend | str] = {}
        made: dict[tuple[str, str], Backend] = {}
        for name in self.plan.variants:
            v = VARIANTS[name]
            if v.gpu_only and self.device.type != "cuda":
                self._skip(name, preset, "needs a CUDA GPU")
                continue
            if v.backend == "fast":
                from mevos.runtime.fast import cuda_unavailable

                reason = cuda_unavailable()
                if reason:
                    self._skip(name, preset, reason)
                else:
                    out[name] = "fast"
                continue
            key = (v.backend, _precision(v, self.device))
            if key not in made:
                t = time.perf_counter()
                try:
                    made[key] = self._create(v, preset)
                except _UNAVAILABLE as exc:
                    self._skip(name, preset, f"{type(exc).__name__}: {exc}")
                    continue
                self.log(f"{preset}: backend {v.backend} ({key[1]}) ready in {time.perf_counter() - t:.1f} s")
            out[name] = made[key]
        return out

    def _create(self, v: Variant, preset: str) -> Backend:
        path = self.models.path(preset)
        if v.backend == "onnxruntime" and self.plan.threads is not None:
            from mevos.export.onnx import resolve_export
            from mevos.runtime.onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(resolve_export(path), device=str(self.device), precision=v.precision,
                                      threads=self.plan.threads)
        return create_backend(v.backend, path, device=str(self.device), precision=v.precision)

    def _skip(self, variant: str, preset: str, reason: str) -> None:
        self.skipped.append({"variant": variant, "preset": preset, "reason": reason})
        self.log(f"{preset}: skipping {variant}: {reason}")

    def _filler(self, preset: str, backends: dict[str, Backend | str]) -> Backend:
        b = backends.get("baseline")
        if isinstance(b, Backend):
            return b
        return create_backend("torch", self.models.path(preset), device=str(self.device), precision="fp32")

    # -- sections -------------------------------------------------------------------------------

    def _row(self, preset: str, variant: Variant, res: str, objects: int, mem: int) -> dict[str, Any]:
        h, w = parse_resolution(res)
        return {"variant": variant.name, "backend": variant.backend, "precision": _precision(variant, self.device),
                "affinity": variant.affinity, "preset": preset, "resolution": res, "height": h, "width": w,
                "objects": objects, "mem_frames": mem, "refine_rounds": self.plan.refine_rounds}

    def stages(self, preset: str, backends: dict[str, Backend | str]) -> list[dict[str, Any]]:
        plan, dev = self.plan, self.device
        filler = self._filler(preset, backends)
        rows: list[dict[str, Any]] = []
        for (res, objects), mems in plan.stage_configs().items():
            h, w = parse_resolution(res)
            t_max = 1 + max(mems)
            clip = video(h, w, objects, t_max + 1)
            t = time.perf_counter()
            memory = fill_memory(filler, clip, t_max)
            frame = clip.frames[t_max]  # a frame not in the memory
            self.log(f"{preset} {res} O={objects}: memory of {t_max} frames encoded in "
                     f"{time.perf_counter() - t:.1f} s")
            for name, backend in backends.items():
                v = VARIANTS[name]
                if backend == "fast":
                    rows += self._fast_stages(preset, v, res, objects, mems)
                    continue
                assert isinstance(backend, Backend)
                for mem in mems:
                    # At the frame's own resolution (no max_short_side): the row's resolution is the work done.
                    cfg = TrackerConfig(mem_frames=mem, refine_rounds=plan.refine_rounds, max_short_side=None,
                                        affinity_impl=v.affinity)
                    with Meters(dev) as m:
                        tracker = primed_tracker(backend, cfg, clip.frames[0], clip.labels[0], memory, 1 + mem)
                        times, path = time_frame(tracker, frame, plan.warmup, plan.repeat, plan.budget_s)
                    del tracker
                    stages = compose(times)
                    total = frame_ms(stages)
                    row = {**self._row(preset, v, res, objects, mem), "affinity_path": path, "stages_ms": stages,
                           "frame_ms": total, "fps_from_stages": 1e3 / total if total > 0 else None, **m.memory()}
                    rows.append(row)
                    self.log(f"stages {name:16s} {preset} {res} O={objects} T={mem}: {total:8.1f} ms/frame "
                             f"(affinity {stages['affinity_topk']['median']:.1f} ms, {path})")
        return rows

    def _fast_stages(self, preset: str, v: Variant, res: str, objects: int, mems: tuple[int, ...]
                     ) -> list[dict[str, Any]]:
        from mevos.bench.fastbench import profile_fast

        rows = []
        model = self.models.model(preset)
        for mem in mems:
            warm = warmup_frames(mem)
            h, w = parse_resolution(res)
            frames_clip = video(h, w, objects, warm + self.plan.repeat + 10)
            cfg = TrackerConfig(mem_frames=mem, refine_rounds=self.plan.refine_rounds, max_short_side=None)
            with Meters(self.device) as m:
                prof = profile_fast(model, cfg, frames_clip.frames, frames_clip.labels[0], warm, self.plan.repeat,
                                    self.device)
            total = prof["frame_ms"]
            rows.append({**self._row(preset, v, res, objects, mem), "affinity_path": prof["affinity_path"],
                         "stages_ms": prof["stages_ms"], "frame_ms": total,
                         "fps_from_stages": 1e3 / total if total > 0 else None,
                         "host_syncs_per_frame": prof["host_syncs_per_frame"], "cuda_graphs": prof["cuda_graphs"],
                         **m.memory()})
            self.log(f"stages {v.name:16s} {preset} {res} O={objects} T={mem}: {total:8.1f} ms/frame")
        return rows

    def end_to_end(self, preset: str, backends: dict[str, Backend | str]) -> list[dict[str, Any]]:
        plan = self.plan
        rows = []
        for res in plan.e2e_resolutions:
            h, w = parse_resolution(res)
            for objects in plan.e2e_objects:
                for mem in plan.e2e_mem_frames:
                    warm = warmup_frames(mem)
                    clip = video(h, w, objects, warm + plan.e2e_frames)
                    cfg = TrackerConfig(mem_frames=mem, refine_rounds=plan.refine_rounds)
                    for name, backend in backends.items():
                        v = VARIANTS[name]
                        cfg = dataclasses.replace(cfg, affinity_impl=v.affinity)
                        if backend == "fast":
                            from mevos.bench.fastbench import run_fast

                            r = run_fast(self.models.model(preset), cfg, clip.frames, clip.labels[0], warm, self.device)
                        else:
                            assert isinstance(backend, Backend)
                            r = run_tracker(backend, cfg, clip.frames, clip.labels[0], warm)
                        rows.append({**self._row(preset, v, res, objects, mem), **r})
                        self.log(f"e2e    {name:16s} {preset} {res} O={objects} T={mem}: {r['fps']:8.2f} FPS")
        return rows

    def serving(self, preset: str, backends: dict[str, Backend | str]) -> dict[str, Any]:
        from mevos.bench.serving import grpc_unavailable, run_grpc

        plan = self.plan
        reason = grpc_unavailable()
        torch_backend = backends.get("torch")
        if reason is None and not isinstance(torch_backend, Backend):
            reason = "the torch variant is not in this run"
        if reason:
            self.log(f"serving skipped: {reason}")
            return {"status": "skipped", "reason": reason}
        assert isinstance(torch_backend, Backend)
        res, objects, mem = plan.grpc_resolution, plan.grpc_objects, plan.grpc_mem_frames
        h, w = parse_resolution(res)
        warm = warmup_frames(mem)
        cfg = TrackerConfig(mem_frames=mem, refine_rounds=plan.refine_rounds)
        settings = {**self._row(preset, VARIANTS["torch"], res, objects, mem)}
        clip = video(h, w, objects, warm + plan.grpc_frames)
        out = run_grpc(torch_backend, cfg, clip.frames, clip.labels[0], warm, plan.grpc_pipelined,
                       lambda: run_tracker(torch_backend, cfg, clip.frames, clip.labels[0], warm))
        lock, local = out["lockstep"], out["in_process"]
        out.update(settings)
        out["overhead_ms_per_frame"] = float(lock["latency_ms"]["median"]) - float(local["ms_per_frame"]["median"])
        out["fps_ratio_grpc_vs_in_process"] = lock["fps"] / local["fps"]
        out["added_ms_per_frame"] = float(lock["added_ms"]["total"]["median"])
        self.log(f"grpc   lock-step {lock['fps']:.2f} FPS (in-process {local['fps']:.2f}); serving adds "
                 f"{out['added_ms_per_frame']:.1f} ms/frame (paired)")
        return out

    def fast_path(self) -> dict[str, Any]:
        """The fast path at the goal configuration, per preset, with the ablations and the J&F check."""
        from mevos.runtime.fast import FastOptions, cuda_unavailable

        plan = self.plan
        if cuda_unavailable():
            return {"status": "skipped", "reason": f"needs a GPU: torch {torch.__version__} sees no CUDA device here; "
                                                   "run `mevos bench` on a CUDA GPU"}
        if self.device.type != "cuda":
            return {"status": "skipped", "reason": "needs a GPU: this run is on the CPU; run with --device cuda"}
        from mevos.bench.fastbench import GOAL_FPS, jf_parity, profile_fast, run_fast

        h, w = parse_resolution(plan.fast_resolution)
        mem = plan.fast_mem_frames
        warm = warmup_frames(mem)
        cfg = TrackerConfig(mem_frames=mem, refine_rounds=plan.refine_rounds, max_short_side=None)
        clip = video(h, w, plan.fast_objects, warm + plan.fast_frames)
        out: dict[str, Any] = {"status": "ok", "resolution": plan.fast_resolution, "objects": plan.fast_objects,
                               "mem_frames": mem, "refine_rounds": plan.refine_rounds, "goal_fps": GOAL_FPS,
                               "presets": {}}
        reference = dataclasses.replace(cfg, affinity_impl="reference")
        ablations = {"all on": (FastOptions(), cfg), "fp32": (FastOptions(fp16=False), cfg),
                     "no CUDA graphs": (FastOptions(cuda_graphs=False), cfg),
                     "reference ops (no fused kernel)": (FastOptions(), reference),
                     "pageable uploads": (FastOptions(pinned_uploads=False), cfg)}
        for preset in plan.fast_presets:
            model = self.models.model(preset)
            entry: dict[str, Any] = {"weights": self.models.describe(preset)}
            for label, (options, config) in ablations.items():
                frames = clip.frames if label == "all on" else clip.frames[: warm + min(plan.fast_frames, 60)]
                try:
                    entry[label] = run_fast(model, config, frames, clip.labels[0], warm, self.device, options)
                except _UNAVAILABLE as exc:
                    entry[label] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                self.log(f"fast   {preset} {label}: {entry[label].get('fps', float('nan')):.1f} FPS")
            entry["profile"] = profile_fast(model, cfg, clip.frames, clip.labels[0], warm, min(plan.repeat, 50),
                                            self.device)
            fps = entry["all on"].get("fps")
            entry["goal_reached"] = bool(fps is not None and fps >= GOAL_FPS)
            out["presets"][preset] = entry
        if not plan.jf_check:
            out["jf"] = {"status": "skipped", "reason": "not asked for (--no-jf)"}
        elif self.davis is None or not self.davis.is_dir():
            out["jf"] = {"status": "skipped", "reason": f"DAVIS folder {self.davis} not found (--davis)"}
        else:
            preset = self.models.presets(("small",))[0]
            self.log(f"fast   J&F check on {self.davis} ({self.models.describe(preset)})")
            out["jf"] = jf_parity(self.models.model(preset), cfg, self.davis, plan.jf_sequences, self.device)
            out["jf"]["weights"] = self.models.describe(preset)
            self.log(f"fast   J&F {out['jf']['jf_fast']:.4f} vs fp32 baseline {out['jf']['jf_reference']:.4f}")
        return out

    # -- everything -----------------------------------------------------------------------------

    def run(self, command: list[str]) -> dict[str, Any]:
        plan = self.plan
        if plan.threads is not None:
            torch.set_num_threads(plan.threads)
        machine = environment.machine_info()
        doc: dict[str, Any] = {
            "schema": schema.SCHEMA, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": plan.mode, "command": command, "machine": machine,
            "device": environment.device_info(self.device), "versions": environment.versions(),
            "settings": {**plan.to_dict(), "device": str(self.device), "checkpoint": self.models.checkpoint,
                         "tracker": {"top_k": self.tracker_base.top_k, "temperature": self.tracker_base.temperature,
                                     "radius": self.tracker_base.radius, "chunk_size": self.tracker_base.chunk_size},
                         "variants_described": {v: VARIANTS[v].description for v in plan.variants}},
            "methods": {
                "timing": "time.perf_counter after torch.cuda.synchronize (CUDA) around each stage / frame; "
                          "warm-up iterations run first and are not recorded; statistics over the timed ones",
                "stages": "Tracker.step (the fast tracker's step for 'fast') timed through the runtime's profiling "
                          "hook, on a tracker whose memory holds 1 + mem_frames frames, at the frame's own "
                          "resolution; frame_ms = sum of the stage medians",
                "end_to_end": "real Tracker over the synthetic video; warm-up = mem_frames + 2 frames (memory full)",
                "baseline": "speedup_vs_baseline = baseline figure / this figure (FPS: this / baseline), "
                            "same preset, resolution, objects and memory frames",
                "host_memory": _host_method(),
                "device_memory": DevicePeak.method,
            },
        }
        results: dict[str, Any] = {"stages": [], "end_to_end": [], "serving": {"status": "skipped",
                                                                               "reason": "not asked for"},
                                   "fast_path": {"status": "skipped", "reason": "not asked for (--no-fast)"}}
        presets = self.models.presets(plan.presets)
        doc["settings"]["weights"] = {p: self.models.describe(p) for p in presets}
        for preset in presets:
            self.log(f"{preset}: {self.models.describe(preset)}")
            backends = self._backends(preset)
            if plan.stage_configs():
                results["stages"] += self.stages(preset, backends)
            if plan.e2e_resolutions and plan.e2e_objects and plan.e2e_mem_frames:
                results["end_to_end"] += self.end_to_end(preset, backends)
            if plan.grpc and preset == presets[0]:
                results["serving"] = self.serving(preset, backends)
        if plan.fast or self.device.type != "cuda":
            results["fast_path"] = self.fast_path()  # on the CPU: skipped, saying it needs a GPU
        results["skipped"] = self.skipped
        add_ratios(results)
        doc["results"] = results
        machine["load_average_end"] = environment.load_average()
        doc["wall_seconds"] = time.perf_counter() - self.t0
        # CPU time over wall time: near the thread count on an idle machine, far below it when
        # other work competes for the cores (then the CPU figures are slower than the hardware).
        machine["process_cpu_seconds"] = environment.cpu_seconds() - self.cpu0
        machine["cpu_seconds_per_wall_second"] = machine["process_cpu_seconds"] / doc["wall_seconds"]
        return doc


def _host_method() -> str:
    with HostPeak() as h:
        pass
    return h.method


def _max_memory(*parts: dict[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in ("peak_host_mb", "peak_device_mb"):
        vals = [p[k] for p in parts if p.get(k) is not None]
        out[k] = max(vals) if vals else None  # type: ignore[type-var]
    return out


def _config_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["preset"], row["resolution"], row["objects"], row["mem_frames"], row["refine_rounds"])


def add_ratios(results: dict[str, Any]) -> None:
    """speedup_vs_baseline on every stage and end-to-end row whose configuration has a baseline row."""
    base = {_config_key(r): r for r in results["stages"] if r["variant"] == "baseline"}
    for r in results["stages"]:
        b = base.get(_config_key(r))
        r["speedup_vs_baseline"] = b["frame_ms"] / r["frame_ms"] if b and r["frame_ms"] > 0 else None
        r["stage_speedup_vs_baseline"] = (
            {s: float(b["stages_ms"][s]["median"]) / float(v["median"]) for s, v in r["stages_ms"].items()
             if s in b["stages_ms"] and float(v["median"]) > 0} if b else None
        )
    base = {_config_key(r): r for r in results["end_to_end"] if r["variant"] == "baseline"}
    for r in results["end_to_end"]:
        b = base.get(_config_key(r))
        r["speedup_vs_baseline"] = r["fps"] / b["fps"] if b and b["fps"] > 0 else None
