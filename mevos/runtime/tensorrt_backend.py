"""The TensorRT backend: the three engines of an export folder, run on torch CUDA tensors.

Each engine's inputs and outputs are bound by name to torch tensors (outputs allocated by torch
with the shapes TensorRT infers), and `execute_async_v3` runs on torch's current stream, so the
engines order with the torch work around them and tensors never leave the GPU.

Engines are refused, with the command that rebuilds them, when engine.json is missing or does
not match them, when they were built for another GPU or TensorRT version, or from other ONNX
graphs than those beside them. Handed a checkpoint (or nothing: the default weights), the backend
exports and builds into the cache and rebuilds there by itself when the target changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mevos.errors import InputError, MevosError, UsageError
from mevos.model.graphs import GRAPH_NAMES, GraphSpec, graph_specs, input_size
from mevos.export.manifest import (
    ENGINE_MANIFEST,
    OnnxExport,
    Profile,
    check_engine_target,
    read_json,
    rebuild_hint,
    verify_file,
)
from mevos.export.tensorrt import gpu_target, make_logger, require_tensorrt

if TYPE_CHECKING:
    import tensorrt as trt


def _torch_dtype(dtype: trt.DataType) -> torch.dtype:
    import tensorrt as trt

    table = {
        trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool,
        trt.DataType.INT8: torch.int8,
    }
    if dtype not in table:
        raise MevosError(f"TensorRT tensor type {dtype} has no torch equivalent")
    return table[dtype]


class _Engine:
    """One deserialised engine, its execution context and its tensors by name."""

    def __init__(self, runtime: trt.Runtime, path: Path, spec: GraphSpec, profile: Profile,
                 device: torch.device) -> None:
        import tensorrt as trt

        self.spec, self.profile, self.device, self.folder = spec, profile, device, path.parent
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise InputError(f"TensorRT {trt.__version__} cannot load {path} (corrupt, or built by another "
                             f"TensorRT); {rebuild_hint(path.parent)}")
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(self.inputs) != sorted(spec.input_names) or sorted(self.outputs) != sorted(spec.output_names):
            raise InputError(f"{path} has inputs {self.inputs} and outputs {self.outputs}, not those of "
                             f"{spec.name}; {rebuild_hint(path.parent)}")
        self.dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n)) for n in names}

    def run(self, *tensors: Tensor) -> list[Tensor]:
        feeds = dict(zip(self.spec.input_names, tensors, strict=True))
        h, w, o = input_size(self.spec.name, {k: tuple(v.shape) for k, v in feeds.items()})
        self.profile.check(h, w, o, self.folder)
        for name, t in feeds.items():
            # On torch's stream, so freeing these temporaries after the call is safe (stream order).
            t = t.detach().to(self.device, self.dtypes[name]).contiguous()
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise InputError(f"{self.spec.name}: TensorRT refuses input {name} of shape {tuple(t.shape)}; "
                                 f"{rebuild_hint(self.folder)}")
            self.context.set_tensor_address(name, t.data_ptr())
            feeds[name] = t
        outputs = []
        for name in self.spec.output_names:
            dims = self.context.get_tensor_shape(name)  # inferred from the input shapes set above
            shape = tuple(dims[i] for i in range(len(dims)))
            out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise MevosError(f"TensorRT failed to run {self.spec.name} (see the TensorRT errors logged)")
        return [o.float() for o in outputs]


def load_engine_manifest(folder: Path, export: OnnxExport, precision: str) -> dict[str, Any]:
    """engine.json of `folder`, after every check that needs no GPU work: target, precision, the
    ONNX the engines came from, and every engine's checksum."""
    hint = rebuild_hint(folder)
    manifest = read_json(folder / ENGINE_MANIFEST, "TensorRT engines", f"build them with: {hint.split(': ', 1)[1]}")
    if manifest.get("kind") != "tensorrt":
        raise InputError(f"{folder / ENGINE_MANIFEST} is not a TensorRT engine manifest; {hint}")
    trt_version = require_tensorrt("the tensorrt backend")
    gpu, cc = gpu_target(torch.cuda.current_device())
    check_engine_target(manifest, trt_version, gpu, cc, folder)
    built = manifest["tensorrt"].get("precision")
    if precision in ("fp16", "fp32") and built != precision:
        raise InputError(f"the TensorRT engines in {folder} are {built}, not {precision}; rebuild them with: "
                         f"mevos export --out {folder} --format tensorrt --rebuild --precision {precision}")
    for name in GRAPH_NAMES:
        entry = manifest["graphs"][name]
        if entry["onnx"]["sha256"] != export.manifest["graphs"][name]["sha256"]:
            raise InputError(f"the TensorRT engine {entry['file']} was built from another {name} ONNX graph than "
                             f"the one now in {folder}; {hint}")
        verify_file(folder, entry, ENGINE_MANIFEST, hint)
    return manifest


class TensorRTBackend:
    """Runs the engines of an export folder on a CUDA device."""

    name = "tensorrt"

    def __init__(self, export: OnnxExport, device: str | torch.device = "cuda", precision: str = "auto") -> None:
        require_tensorrt("the tensorrt backend")
        import tensorrt as trt

        self.device = _cuda_device(device)
        torch.cuda.set_device(self.device)
        folder = export.folder
        self.manifest = load_engine_manifest(folder, export, precision)
        self.export = export
        self.config = export.config
        self.precision = str(self.manifest["tensorrt"]["precision"])
        self.profile = Profile.from_dict(self.manifest["tensorrt"]["profile"])
        self._logger = make_logger()  # must outlive the runtime and the engines
        self._runtime = trt.Runtime(self._logger)
        specs = graph_specs(self.config)
        self.engines = {
            name: _Engine(self._runtime, folder / self.manifest["graphs"][name]["file"], specs[name], self.profile,
                          self.device)
            for name in GRAPH_NAMES
        }

    @classmethod
    def from_path(cls, model_path: str | os.PathLike[str] | None, device: str = "cuda",
                  precision: str = "auto") -> TensorRTBackend:
        from mevos.export.manifest import load_onnx_export
        from mevos.export.onnx import resolve_export
        from mevos.export.tensorrt import build_engines

        require_tensorrt("the tensorrt backend")
        dev = _cuda_device(device)
        if model_path is not None and Path(model_path).is_dir():
            return cls(load_onnx_export(model_path), dev, precision)
        # A checkpoint: its export and engines live in the cache, which we may rebuild at will.
        export = resolve_export(model_path)
        want = "fp32" if precision == "fp32" else "fp16"
        try:
            return cls(export, dev, want)
        except InputError:
            torch.cuda.set_device(dev)
            build_engines(export.folder, precision=want, device=dev.index or 0)
            return cls(export, dev, want)

    def encode_key(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image 1 x 3 x H x W float in [0, 1] -> (key 1 x Ck x H/8 x W/8, res3, res2)."""
        key, res3, res2 = self.engines["encode_key"].run(image)
        return key, res3, res2

    def encode_value(self, image: Tensor, masks: Tensor) -> Tensor:
        """image 1 x 3 x H x W, masks O x 1 x H x W -> values O x Cv x H/8 x W/8."""
        return self.engines["encode_value"].run(image, masks)[0]

    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        """readout, value O x Cv x h x w; res3 1 x C3 x h x w; res2 1 x C2 x 2h x 2w -> logits O x 1 x 8h x 8w."""
        return self.engines["decode"].run(readout, value, res3, res2)[0]


def _cuda_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type != "cuda":
        raise UsageError(f"the tensorrt backend runs on CUDA only, not on {dev}; add --device cuda, or use "
                         f"--backend onnxruntime or torch on the CPU")
    if not torch.cuda.is_available():
        raise UsageError("the tensorrt backend needs a CUDA GPU, and torch sees none; use --backend onnxruntime "
                         "or torch with --device cpu")
    return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())


def tensorrt_backend_from_path(model_path: str | None, device: str = "cuda", precision: str = "auto") -> TensorRTBackend:
    """TensorRT engines of an export folder (built with `mevos export --format tensorrt`), or of a
    checkpoint / the default weights (exported and built into the cache on first use)."""
    return TensorRTBackend.from_path(model_path, device=device, precision=precision)
