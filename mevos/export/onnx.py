"""Export a MevosNet to three ONNX graphs (encode_key, encode_value, decode) and their manifest.

Height, width and object count are dynamic axes. The export is written into a temporary folder
beside the target and renamed into place when complete, so a folder that has a manifest.json is
always a whole export. `cached_export` does the same under the cache directory, keyed by the
checkpoint's sha256, for backends that are handed a checkpoint instead of an export folder.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import os
import platform
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mevos import __version__
from mevos.errors import InputError, MevosError, require
from mevos.export.manifest import (
    FORMAT,
    ONNX_MANIFEST,
    VERSION,
    OnnxExport,
    load_onnx_export,
    sha256_file,
    write_json_atomic,
)
from mevos.model.graphs import GRAPH_NAMES, GraphSpec, graph_specs
from mevos.model.network import MevosNet

DEFAULT_OPSET = 17
#: Size the graphs are traced at. Deliberately unlike any size they run at, with several objects,
#: so that a dimension the tracer fixed by mistake shows up as a runtime shape error.
TRACE_SIZE = (72, 104)
TRACE_OBJECTS = 3


class StageModule(nn.Module):
    """One stage method of a MevosNet as a module with a plain forward, for torch.onnx.export."""

    def __init__(self, model: MevosNet, stage: str) -> None:
        super().__init__()
        if stage not in GRAPH_NAMES:
            raise ValueError(stage)
        self.model = model
        self.stage = stage

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        return getattr(self.model, self.stage)(*inputs)


def _example_inputs(spec: GraphSpec, height: int, width: int, objects: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.rand(shape, generator=gen) for shape in spec.input_shapes(height, width, objects).values())


def _export_graph(model: MevosNet, spec: GraphSpec, path: Path, opset: int) -> str:
    """Write one graph to `path`; returns the exporter used."""
    module = StageModule(model, spec.name).eval()
    args = _example_inputs(spec, *TRACE_SIZE, TRACE_OBJECTS)
    axes = {t.name: t.dynamic_axes() for t in (*spec.inputs, *spec.outputs)}
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter announces its own deprecation on every call.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(path), input_names=spec.input_names, output_names=spec.output_names,
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        return "torchscript"
    except (TypeError, NotImplementedError, AttributeError):
        # A torch whose TorchScript exporter is gone: torch.export-based exporter, needs onnxscript.
        pass
    require("onnxscript", "onnx", "ONNX export with torch's dynamo exporter")
    dyn = torch.export.Dim.DYNAMIC
    shapes = {t.name: {i: dyn for i in t.dynamic_axes()} for t in spec.inputs}
    torch.onnx.export(
        module, args, str(path), input_names=spec.input_names, output_names=spec.output_names,
        dynamic_shapes=shapes, opset_version=opset, dynamo=True, external_data=False,
    )
    return "dynamo"


def _io_entries(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Named inputs/outputs with their shapes (ints and dim names) as the ONNX file declares them."""
    onnx = require("onnx", "onnx", "ONNX export")
    model = onnx.load(str(path))

    def entry(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [entry(v) for v in model.graph.input], "outputs": [entry(v) for v in model.graph.output]}


def _declare_shapes(path: Path, spec: GraphSpec) -> None:
    """Write the spec's symbolic shapes onto the graph's inputs and outputs. The tracer leaves
    some output dimensions it could not prove constant as generated names (the key's batch of 1
    comes out as 'Divkey_dim_0'); the manifest and TensorRT should see the real contract."""
    onnx = require("onnx", "onnx", "ONNX export")
    model = onnx.load(str(path))
    by_name = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for v in (*model.graph.input, *model.graph.output):
        dims = v.type.tensor_type.shape.dim
        want = by_name[v.name].shape
        if len(dims) != len(want):
            raise MevosError(f"ONNX export of {spec.name}: {v.name} has rank {len(dims)}, expected {len(want)}")
        for d, w in zip(dims, want, strict=True):
            if isinstance(w, int):
                if d.HasField("dim_value") and d.dim_value != w:
                    raise MevosError(f"ONNX export of {spec.name}: {v.name} has a dimension {d.dim_value}, expected {w}")
                d.dim_value = w
            else:
                d.dim_param = w
    onnx.save(model, str(path))


def _check_graph(path: Path, spec: GraphSpec) -> None:
    onnx = require("onnx", "onnx", "ONNX export")
    onnx.checker.check_model(str(path), full_check=True)
    io_ = _io_entries(path)
    names = ([e["name"] for e in io_["inputs"]], [e["name"] for e in io_["outputs"]])
    if names != (spec.input_names, spec.output_names):
        raise MevosError(f"ONNX export of {spec.name} has inputs/outputs {names}, expected "
                         f"{(spec.input_names, spec.output_names)}")


def export_onnx(
    model: MevosNet,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_sha256: str | None = None,
    force: bool = False,
) -> OnnxExport:
    """Export the three graphs of `model` (fp32, on the CPU) into `out_dir` with manifest.json.

    `out_dir` must not exist or be empty unless `force`. `checkpoint` is recorded in the manifest.
    """
    require("onnx", "onnx", "ONNX export")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its folder is 0700, and this one becomes the export folder, which the
    # serving user (often another account) must be able to read; mkdir honours the umask.
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.partial"
    tmp.mkdir()
    try:
        # A private fp32 CPU copy: the exporter flips train/eval modes and must not touch the caller's model.
        net = copy.deepcopy(model).float().cpu().eval()
        specs = graph_specs(net.config)
        graphs: dict[str, Any] = {}
        exporter = ""
        for name in GRAPH_NAMES:
            path = tmp / f"{name}.onnx"
            exporter = _export_graph(net, specs[name], path, opset)
            _declare_shapes(path, specs[name])
            _check_graph(path, specs[name])
            graphs[name] = {"file": path.name, "sha256": sha256_file(path), **_io_entries(path)}
        ckpt = None
        if checkpoint is not None:
            ckpt = {"file": str(checkpoint), "sha256": checkpoint_sha256 or sha256_file(checkpoint)}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "kind": "onnx",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": {"preset": net.config.name, "config": net.config.to_dict()},
            "checkpoint": ckpt,
            "opset": opset,
            "exporter": exporter,
            "dimensions": {
                "height": "padded input height, a multiple of 8", "width": "padded input width, a multiple of 8",
                "height_4": "height / 4", "width_4": "width / 4", "height_8": "height / 8", "width_8": "width / 8",
                "objects": "number of objects",
            },
            "versions": _versions(),
            "graphs": graphs,
        }
        write_json_atomic(tmp / ONNX_MANIFEST, manifest)
        if out.exists():
            if force:
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            else:
                out.rmdir()  # empty when checked above; fails if another process filled it since
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_onnx_export(out)


def _versions() -> dict[str, str]:
    onnx = require("onnx", "onnx", "ONNX export")
    return {"mevos": __version__, "torch": str(torch.__version__), "onnx": onnx.__version__,
            "python": platform.python_version()}


def _weights_sha256(model: MevosNet) -> str:
    """A digest of a model's config and weights (for models that come from no file)."""
    h = hashlib.sha256(repr(model.config.to_dict()).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_export(checkpoint: str | os.PathLike[str] | None, opset: int = DEFAULT_OPSET) -> OnnxExport:
    """The ONNX export of a checkpoint (None: the default weights) from the cache, exporting it
    first when absent or damaged. Keyed by the checkpoint's sha256; safe against concurrent callers."""
    from mevos.env import cache_dir
    from mevos.model.weights import load_default_model

    if checkpoint is not None:
        digest = sha256_file(checkpoint)
        model = None
    else:
        model, _ = load_default_model(None)
        digest = _weights_sha256(model)
    folder = cache_dir() / "onnx" / f"{digest[:24]}-opset{opset}"
    if folder.exists():
        try:
            return load_onnx_export(folder)
        except InputError:
            shutil.rmtree(folder, ignore_errors=True)  # damaged or partial cache entry: export again
    if model is None:
        model, _ = load_default_model(checkpoint)
    try:
        return export_onnx(model, folder, opset=opset, checkpoint=checkpoint, checkpoint_sha256=digest)
    except (InputError, OSError):
        # Another process put its export in place first: use that one.
        if (folder / ONNX_MANIFEST).is_file():
            return load_onnx_export(folder)
        raise


def resolve_export(model_path: str | os.PathLike[str] | None) -> OnnxExport:
    """An export folder as given, or the cached export of a checkpoint / the default weights."""
    if model_path is None:
        return cached_export(None)
    path = Path(model_path)
    if path.is_dir():
        return load_onnx_export(path)
    if path.suffix == ".onnx":
        raise InputError(f"{path}: give the export folder that holds {path.name} and {ONNX_MANIFEST}, not the file")
    if not path.exists():
        raise InputError(f"{path} does not exist: give a checkpoint (.pt) or a folder made by `mevos export`")
    return cached_export(path)
