"""The shape of a results document (benchmarks/results/bench_*.json), checked before it is
written and by the tests. Hand-written rather than JSON Schema: no extra dependency, and the
messages name the offending path."""

from __future__ import annotations

from typing import Any

from mevos.errors import MevosError

SCHEMA = "mevos.bench/1"

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_STR = (str,)
_OPT_STR = (str, type(None))
Spec = dict[str, tuple[type, ...]]

TOP: Spec = {
    "schema": _STR, "created": _STR, "mode": _STR, "command": (list,), "machine": (dict,), "device": (dict,),
    "versions": (dict,), "settings": (dict,), "methods": (dict,), "results": (dict,), "wall_seconds": _NUM,
}
MACHINE: Spec = {"hostname": _STR, "cpu_model": _STR, "cpu_cores": (int,), "load_average_start": (list, type(None))}
DEVICE: Spec = {"type": _STR, "name": _STR, "capability": _OPT_STR}
VERSIONS: Spec = {"python": _STR, "torch": _STR, "mevos": _STR, "onnxruntime": _OPT_STR, "cuda": _OPT_STR}
METHODS: Spec = {"timing": _STR, "host_memory": _STR, "device_memory": _STR}
CONFIG: Spec = {
    "variant": _STR, "backend": _STR, "precision": _STR, "affinity": _STR, "preset": _STR, "resolution": _STR,
    "height": (int,), "width": (int,), "objects": (int,), "mem_frames": (int,), "refine_rounds": (int,),
}
STAGE_ROW: Spec = {
    **CONFIG, "stages_ms": (dict,), "frame_ms": _NUM, "fps_from_stages": _OPT_NUM, "speedup_vs_baseline": _OPT_NUM,
    "affinity_path": _STR, "peak_host_mb": _OPT_NUM, "peak_device_mb": _OPT_NUM,
}
E2E_ROW: Spec = {
    **CONFIG, "fps": _NUM, "frames_warmup": (int,), "frames_timed": (int,), "ms_per_frame": (dict,),
    "speedup_vs_baseline": _OPT_NUM, "peak_host_mb": _OPT_NUM, "peak_device_mb": _OPT_NUM,
}
STATS: Spec = {"median": _NUM, "mean": _NUM, "p90": _NUM, "min": _NUM, "max": _NUM, "n": (int,)}
SERVING_OK: Spec = {
    "lockstep": (dict,), "in_process": (dict,), "overhead_ms_per_frame": _NUM, "added_ms_per_frame": _NUM,
    "fps_ratio_grpc_vs_in_process": _NUM, "image_format": _STR, "mask_encoding": _STR,
}


def _fields(obj: Any, spec: Spec, path: str, problems: list[str]) -> None:
    if not isinstance(obj, dict):
        problems.append(f"{path}: expected an object, got {type(obj).__name__}")
        return
    for key, types in spec.items():
        if key not in obj:
            problems.append(f"{path}.{key}: missing")
        elif not isinstance(obj[key], types) or (isinstance(obj[key], bool) and bool not in types):
            problems.append(f"{path}.{key}: expected {'/'.join(t.__name__ for t in types)}, "
                            f"got {type(obj[key]).__name__}")


def problems(doc: Any) -> list[str]:
    """Everything wrong with `doc` as a results document (empty when it is valid)."""
    out: list[str] = []
    _fields(doc, TOP, "$", out)
    if out:
        return out
    if doc["schema"] != SCHEMA:
        out.append(f"$.schema: expected {SCHEMA!r}, got {doc['schema']!r}")
    _fields(doc["machine"], MACHINE, "$.machine", out)
    _fields(doc["device"], DEVICE, "$.device", out)
    _fields(doc["versions"], VERSIONS, "$.versions", out)
    _fields(doc["methods"], METHODS, "$.methods", out)
    res = doc["results"]
    sections: Spec = {"stages": (list,), "end_to_end": (list,), "serving": (dict,), "fast_path": (dict,),
                      "skipped": (list,)}
    _fields(res, sections, "$.results", out)
    for i, row in enumerate(res.get("stages", [])):
        p = f"$.results.stages[{i}]"
        _fields(row, STAGE_ROW, p, out)
        for s, st in (row.get("stages_ms") or {}).items():
            _fields(st, STATS, f"{p}.stages_ms.{s}", out)
    for i, row in enumerate(res.get("end_to_end", [])):
        p = f"$.results.end_to_end[{i}]"
        _fields(row, E2E_ROW, p, out)
        if isinstance(row, dict) and "ms_per_frame" in row and "median" in row["ms_per_frame"]:
            _fields(row["ms_per_frame"], STATS, f"{p}.ms_per_frame", out)
    for name in ("serving", "fast_path"):
        section = res.get(name)
        if isinstance(section, dict):
            status = section.get("status")
            if status not in ("ok", "skipped"):
                out.append(f"$.results.{name}.status: expected 'ok' or 'skipped', got {status!r}")
            elif status == "skipped" and not isinstance(section.get("reason"), str):
                out.append(f"$.results.{name}.reason: a skipped section needs a reason")
            elif status == "ok" and name == "serving":
                _fields(section, SERVING_OK, "$.results.serving", out)
                _fields(section["lockstep"], {"fps": _NUM, "latency_ms": (dict,), "server_ms": (dict,)},
                        "$.results.serving.lockstep", out)
    for i, s in enumerate(res.get("skipped", [])):
        _fields(s, {"variant": _STR, "reason": _STR}, f"$.results.skipped[{i}]", out)
    return out


def check(doc: Any) -> None:
    """Raise MevosError listing every problem of `doc`."""
    found = problems(doc)
    if found:
        raise MevosError("benchmark results do not match schema " + SCHEMA + ":\n  " + "\n  ".join(found))
