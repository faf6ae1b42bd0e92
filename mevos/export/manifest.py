"""Manifests: the JSON files beside exported graphs and engines, and the checks made on them.

An export folder holds

    encode_key.onnx  encode_value.onnx  decode.onnx   manifest.json   (ONNX, `mevos export`)
    encode_key.engine  encode_value.engine  decode.engine  engine.json  (TensorRT, --format tensorrt)

manifest.json: model preset and config, source checkpoint, opset, versions, and per graph its file,
sha256, and named inputs/outputs with symbolic shapes. engine.json: TensorRT version, GPU name and
compute capability, precision, optimisation profile, and the sha256 of each engine and of the ONNX
it was built from. Nothing is loaded whose checksum does not match its manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mevos.atomic import write_bytes_atomic
from mevos.errors import InputError
from mevos.model.graphs import GRAPH_NAMES, STRIDE, check_resolution
from mevos.model.config import ModelConfig

ONNX_MANIFEST = "manifest.json"
ENGINE_MANIFEST = "engine.json"
FORMAT = "mevos-export"
VERSION = 1


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: str | os.PathLike[str], obj: dict[str, Any]) -> Path:
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def export_hint(folder: Path) -> str:
    return f"re-export it with: mevos export --checkpoint CKPT --out {folder} --force"


def rebuild_hint(folder: Path) -> str:
    return f"rebuild the engines from the ONNX next to them with: mevos export --out {folder} --format tensorrt --rebuild"


def read_json(path: Path, kind: str, hint: str) -> dict[str, Any]:
    """A manifest as a dict; a missing, unreadable or foreign file is one InputError with `hint`."""
    if not path.is_file():
        raise InputError(f"{path} does not exist: {path.parent} holds no {kind}; {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a valid manifest ({exc}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path} is not a mevos export manifest (no '{FORMAT}' format tag); {hint}")
    if data.get("version") != VERSION:
        raise InputError(f"{path} has manifest version {data.get('version')}, this mevos reads {VERSION}; {hint}")
    return data


def entry_path(folder: Path, name: object, manifest_name: str, hint: str) -> Path:
    """folder / name for a manifest's `file` entry, which must name a file inside the folder: an
    absolute path or one that leads out of it ('../x.onnx', a symlink outside) is refused."""
    rel = Path(str(name))
    path = folder / rel
    inside = not rel.is_absolute() and ".." not in rel.parts and str(rel) not in ("", ".")
    if inside:
        try:
            inside = path.resolve().is_relative_to(folder.resolve())
        except OSError:
            inside = False
    if not inside:
        raise InputError(f"{folder / manifest_name} lists the file {str(name)[:200]!r}, which is not inside the "
                         f"export folder; {hint}")
    return path


def verify_file(folder: Path, entry: dict[str, Any], manifest_name: str, hint: str) -> Path:
    """The path of a manifest entry {file, sha256} after checking that it exists and matches."""
    try:
        name = entry["file"]
        expected = str(entry["sha256"])
    except (KeyError, TypeError):
        raise InputError(f"{folder / manifest_name} is damaged (an entry lacks file/sha256); {hint}") from None
    path = entry_path(folder, name, manifest_name, hint)
    if not path.is_file():
        raise InputError(f"{path} is missing (listed in {manifest_name}); {hint}")
    actual = sha256_file(path)
    if actual != expected:
        raise InputError(
            f"{path} does not match its checksum in {manifest_name} (sha256 {actual[:12]}... "
            f"instead of {expected[:12]}...): the file was changed or is corrupt; {hint}"
        )
    return path


@dataclass(frozen=True)
class OnnxExport:
    """A verified ONNX export folder."""

    folder: Path
    manifest: dict[str, Any]
    config: ModelConfig
    paths: dict[str, Path]  # graph name -> .onnx file


def load_onnx_export(folder: str | os.PathLike[str], verify: bool = True) -> OnnxExport:
    """Read manifest.json of `folder` and (with `verify`) check every graph's checksum."""
    folder = Path(folder)
    hint = export_hint(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not an export folder; create one with: mevos export --checkpoint CKPT --out {folder}")
    data = read_json(folder / ONNX_MANIFEST, "ONNX export manifest", hint)
    try:
        config = ModelConfig.from_dict(data["model"]["config"])
        graphs = data["graphs"]
        entries = {name: graphs[name] for name in GRAPH_NAMES}
    except Exception as exc:  # KeyError, TypeError, UsageError: a damaged manifest
        raise InputError(f"{folder / ONNX_MANIFEST} is damaged ({type(exc).__name__}: {exc}); {hint}") from None
    paths = {}
    for name, entry in entries.items():
        paths[name] = (verify_file(folder, entry, ONNX_MANIFEST, hint) if verify
                       else entry_path(folder, entry.get("file") if isinstance(entry, dict) else None, ONNX_MANIFEST,
                                       hint))
    return OnnxExport(folder, data, config, paths)


# ------------------------------------------------------------------------------ engine profile


def parse_resolution(text: str) -> tuple[int, int]:
    """'480x864' (height x width) -> (480, 864); both multiples of 8."""
    try:
        h, w = (int(v) for v in text.lower().replace("*", "x").split("x"))
    except ValueError:
        raise InputError(f"resolution {text!r} must be HEIGHTxWIDTH, e.g. 480x864") from None
    check_resolution(h, w)
    return h, w


@dataclass(frozen=True)
class Profile:
    """The shapes a TensorRT engine accepts: padded input resolution (H, W) and object count,
    each with a min, an opt (what the kernels are tuned for) and a max."""

    min_size: tuple[int, int] = (128, 128)
    opt_size: tuple[int, int] = (480, 856)
    max_size: tuple[int, int] = (1088, 1920)
    min_objects: int = 1
    opt_objects: int = 2
    max_objects: int = 8

    def __post_init__(self) -> None:
        for s in (self.min_size, self.opt_size, self.max_size):
            check_resolution(*s)
        for i, what in ((0, "height"), (1, "width")):
            if not self.min_size[i] <= self.opt_size[i] <= self.max_size[i]:
                raise InputError(
                    f"profile {what}s must satisfy min <= opt <= max, got "
                    f"{self.min_size[i]}, {self.opt_size[i]}, {self.max_size[i]}"
                )
        if not 1 <= self.min_objects <= self.opt_objects <= self.max_objects:
            raise InputError(
                f"profile object counts must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_objects}, {self.opt_objects}, {self.max_objects}"
            )

    @classmethod
    def with_max_objects(cls, min_size: tuple[int, int], opt_size: tuple[int, int], max_size: tuple[int, int],
                         max_objects: int) -> Profile:
        return cls(min_size, opt_size, max_size, 1, min(2, max_objects), max_objects)

    def to_dict(self) -> dict[str, Any]:
        return {"min_size": list(self.min_size), "opt_size": list(self.opt_size), "max_size": list(self.max_size),
                "min_objects": self.min_objects, "opt_objects": self.opt_objects, "max_objects": self.max_objects}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        return cls(tuple(d["min_size"]), tuple(d["opt_size"]), tuple(d["max_size"]),  # type: ignore[arg-type]
                   int(d["min_objects"]), int(d["opt_objects"]), int(d["max_objects"]))

    def check(self, height: int, width: int, objects: int, folder: Path | None = None) -> None:
        """InputError when a padded input of height x width with `objects` objects is outside the profile."""
        (h0, w0), (h1, w1) = self.min_size, self.max_size
        where = f" in {folder}" if folder else ""
        if not (h0 <= height <= h1 and w0 <= width <= w1):
            raise InputError(
                f"input resolution {height}x{width} (padded to multiples of {STRIDE}) is outside the profile of the "
                f"TensorRT engines{where}, {h0}x{w0} to {h1}x{w1}; resize the input (e.g. --short-side) or rebuild "
                f"with: mevos export --out {folder or 'DIR'} --format tensorrt --rebuild --min-resolution HxW "
                f"--max-resolution HxW"
            )
        if not self.min_objects <= objects <= self.max_objects:
            raise InputError(
                f"{objects} objects is outside the profile of the TensorRT engines{where} "
                f"({self.min_objects} to {self.max_objects}); track fewer objects or rebuild with: "
                f"mevos export --out {folder or 'DIR'} --format tensorrt --rebuild --max-objects {objects}"
            )


def check_engine_target(manifest: dict[str, Any], trt_version: str, gpu_name: str,
                        compute_capability: str, folder: Path) -> None:
    """InputError when engines were built for another TensorRT version or GPU than this one.

    TensorRT engines are specific to both (unless built hardware-compatible, which mevos does not do)."""
    built = manifest.get("tensorrt", {})
    problems = []
    if built.get("version") != trt_version:
        problems.append(f"TensorRT {built.get('version')} (this is TensorRT {trt_version})")
    if built.get("compute_capability") != compute_capability:
        problems.append(
            f"a {built.get('gpu')} (sm_{str(built.get('compute_capability')).replace('.', '')}; "
            f"this is a {gpu_name}, sm_{compute_capability.replace('.', '')})"
        )
    if problems:
        raise InputError(f"the TensorRT engines in {folder} were built for " + " and ".join(problems)
                         + f" and cannot run here; {rebuild_hint(folder)}")
