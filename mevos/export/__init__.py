"""ONNX export of the three graphs (encode_key, encode_value, decode), TensorRT engine builds,
and the manifests beside them. Works without onnx, onnxruntime or tensorrt installed: each is
imported where it is used, and its absence is a MissingExtraError naming the extra to install."""

from mevos.model.graphs import GRAPH_NAMES, GraphSpec, graph_specs
from mevos.export.manifest import OnnxExport, Profile, load_onnx_export
from mevos.export.onnx import cached_export, export_onnx, resolve_export
from mevos.export.tensorrt import build_engines

__all__ = [
    "GRAPH_NAMES",
    "GraphSpec",
    "graph_specs",
    "OnnxExport",
    "Profile",
    "load_onnx_export",
    "export_onnx",
    "cached_export",
    "resolve_export",
    "build_engines",
]
