"""Build TensorRT engines from the ONNX graphs of an export folder, with the TensorRT Python API.

One engine per graph (encode_key.engine, ...) beside its ONNX file, and engine.json: TensorRT
version, GPU, compute capability, precision, the optimisation profile over resolution and object
count, and the sha256 of every engine and of the ONNX it came from. Timing measurements persist in
a timing cache between builds (per TensorRT version and GPU architecture), so rebuilding is fast.

`tensorrt` is imported inside the functions that need it: `import mevos.export` works without it.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from mevos import __version__
from mevos.atomic import write_bytes_atomic
from mevos.errors import InputError, MevosError, MissingExtraError, UsageError
from mevos.model.graphs import GRAPH_NAMES, GraphSpec, graph_specs
from mevos.export.manifest import (
    ENGINE_MANIFEST,
    FORMAT,
    ONNX_MANIFEST,
    VERSION,
    Profile,
    load_onnx_export,
    sha256_file,
    write_json_atomic,
)

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger("mevos.export.tensorrt")
PRECISIONS = ("fp32", "fp16")


def require_tensorrt(purpose: str = "TensorRT engines") -> str:
    """TensorRT's version; MissingExtraError when it is not installed.

    The `tensorrt-stubs` package alone leaves an empty `tensorrt` namespace package behind, which
    imports fine: a real TensorRT has `Builder`."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingExtraError("tensorrt", "tensorrt", purpose) from exc
    if not hasattr(tensorrt, "Builder"):
        raise MissingExtraError("tensorrt", "tensorrt", purpose)
    return str(tensorrt.__version__)


def gpu_target(device: int | torch.device = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of a CUDA device."""
    if not torch.cuda.is_available():
        raise UsageError("TensorRT engines need a CUDA GPU, and torch sees none; use the onnxruntime or torch backend")
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def default_timing_cache(trt_version: str, compute_capability: str) -> Path:
    from mevos.env import cache_dir

    return cache_dir() / "tensorrt" / f"timing-trt{trt_version}-sm{compute_capability.replace('.', '')}.cache"


def make_logger() -> trt.ILogger:
    """A TensorRT logger that forwards to Python logging ('mevos.export.tensorrt')."""
    import tensorrt as trt

    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.INFO,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }

    class _Forward(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            log.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

    return _Forward()


def _profile_shapes(spec: GraphSpec, profile: Profile) -> dict[str, list[list[int]]]:
    """input name -> [min, opt, max] shapes."""
    corners = [
        spec.input_shapes(*profile.min_size, profile.min_objects),
        spec.input_shapes(*profile.opt_size, profile.opt_objects),
        spec.input_shapes(*profile.max_size, profile.max_objects),
    ]
    return {name: [list(c[name]) for c in corners] for name in spec.input_names}


def _parse(builder: trt.Builder, logger: trt.ILogger, onnx_path: Path) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """The network of an ONNX file, and its parser, which owns the weights: keep both until the build is done."""
    import tensorrt as trt

    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for e in errors:
            log.error("ONNX parser: %s: %s", onnx_path.name, e)
        raise InputError(
            f"TensorRT cannot parse {onnx_path} ({len(errors)} error(s); first: {errors[0] if errors else '?'}); "
            f"re-export the ONNX with: mevos export --checkpoint CKPT --out {onnx_path.parent} --force"
        )
    return network, parser


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    data = b""
    if path.is_file():
        data = path.read_bytes()
    # The C++ API returns null for a cache it cannot read; the stubs do not say so.
    cache = cast("trt.ITimingCache | None", config.create_timing_cache(data))
    if cache is None:
        log.warning("timing cache %s is unreadable; starting an empty one", path)
        cache = config.create_timing_cache(b"")
    return cache


def build_engine(
    builder: trt.Builder,
    logger: trt.ILogger,
    onnx_path: Path,
    spec: GraphSpec,
    precision: str,
    profile: Profile,
    workspace_bytes: int,
    timing_cache: trt.ITimingCache | None,
) -> tuple[bytes, trt.ITimingCache]:
    """Serialized engine of one ONNX graph, and the timing cache it was built with."""
    import tensorrt as trt

    network, parser = _parse(builder, logger, onnx_path)
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != spec.input_names:
        raise InputError(f"{onnx_path} has inputs {names}, expected {spec.input_names}; re-export it")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if timing_cache is not None and not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        log.warning("the timing cache was made on another GPU or TensorRT; starting a new one")
        timing_cache = None
    if timing_cache is None:
        timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(timing_cache, ignore_mismatch=False)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in _profile_shapes(spec, profile).items():
        opt.set_shape(name, trt.Dims(lo), trt.Dims(mid), trt.Dims(hi))
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    del parser  # only now: it owns the weights the build reads
    if serialized is None:
        raise MevosError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT errors logged above")
    return bytes(memoryview(serialized)), timing_cache  # the build added its measurements to it


def build_engines(
    folder: str | os.PathLike[str],
    precision: str = "fp16",
    profile: Profile | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    workspace_gib: float = 4.0,
    device: int = 0,
) -> dict[str, Any]:
    """Build the three engines from the verified ONNX export in `folder`; returns engine.json's content.

    Engines are written beside the ONNX files; engine.json last, so engines without a manifest
    are never taken for a finished build."""
    if precision not in PRECISIONS:
        raise UsageError(f"TensorRT precision must be fp32 or fp16, not {precision!r}")
    trt_version = require_tensorrt("building TensorRT engines")
    import tensorrt as trt

    folder = Path(folder)
    export = load_onnx_export(folder)
    profile = profile or Profile()
    gpu, cc = gpu_target(device)
    torch.cuda.set_device(device)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(trt_version, cc)
    logger = make_logger()
    builder = trt.Builder(logger)
    if precision == "fp16" and not builder.platform_has_fast_fp16:
        log.warning("%s has no fast fp16; the fp16 engines may be no faster than fp32", gpu)
    specs = graph_specs(export.config)
    (folder / ENGINE_MANIFEST).unlink(missing_ok=True)  # the old engines are invalid from here on
    cache: trt.ITimingCache | None = None
    if cache_path.is_file():
        cache = _load_timing_cache(builder.create_builder_config(), cache_path)
    graphs: dict[str, Any] = {}
    for name in GRAPH_NAMES:
        onnx_path = export.paths[name]
        log.info("building %s (%s, %s)", name, precision, gpu)
        data, cache = build_engine(builder, logger, onnx_path, specs[name], precision, profile,
                                   int(workspace_gib * (1 << 30)), cache)
        path = write_bytes_atomic(folder / f"{name}.engine", data)
        graphs[name] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "onnx": {"file": onnx_path.name, "sha256": export.manifest["graphs"][name]["sha256"]},
            "profile_shapes": _profile_shapes(specs[name], profile),
        }
    if cache is not None:
        write_bytes_atomic(cache_path, bytes(memoryview(cache.serialize())))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "tensorrt",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": export.manifest["model"],
        "onnx_manifest": {"file": ONNX_MANIFEST, "sha256": sha256_file(folder / ONNX_MANIFEST)},
        "tensorrt": {
            "version": trt_version,
            "gpu": gpu,
            "compute_capability": cc,
            "precision": precision,
            "profile": profile.to_dict(),
            "workspace_gib": workspace_gib,
            "timing_cache": str(cache_path),
        },
        "versions": {"mevos": __version__, "torch": str(torch.__version__), "tensorrt": trt_version,
                     "cuda": str(torch.version.cuda)},
        "graphs": graphs,
    }
    write_json_atomic(folder / ENGINE_MANIFEST, manifest)
    return manifest
