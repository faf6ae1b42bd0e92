"""ONNX export: the three graphs, their names and dynamic axes, the manifest, the CLI and the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mevos.cli import main  # noqa: E402
from mevos.model.graphs import GRAPH_NAMES, graph_specs  # noqa: E402
from mevos.export.manifest import ONNX_MANIFEST, load_onnx_export, sha256_file  # noqa: E402
from mevos.export.onnx import TRACE_SIZE, cached_export, export_onnx, resolve_export  # noqa: E402
from mevos.model import build_model, preset, save_checkpoint  # noqa: E402
from mevos.model.network import MevosNet  # noqa: E402


@pytest.fixture(scope="module")
def model() -> MevosNet:
    return build_model(preset("small"), seed=0)


@pytest.fixture(scope="module")
def folder(model: MevosNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("export") / "small").folder


def test_files_and_manifest(folder: Path, model: MevosNet) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(f"{g}.onnx" for g in GRAPH_NAMES), ONNX_MANIFEST])
    m = json.loads((folder / ONNX_MANIFEST).read_text())
    assert m["kind"] == "onnx" and m["opset"] == 17 and m["exporter"] in ("torchscript", "dynamo")
    assert m["model"] == {"preset": "small", "config": model.config.to_dict()}
    assert {"mevos", "torch", "onnx", "python"} <= set(m["versions"])
    specs = graph_specs(model.config)
    for name in GRAPH_NAMES:
        g = m["graphs"][name]
        assert g["file"] == f"{name}.onnx" and g["sha256"] == sha256_file(folder / g["file"])
        assert [i["name"] for i in g["inputs"]] == specs[name].input_names
        assert [o["name"] for o in g["outputs"]] == specs[name].output_names
        for entry, spec in zip(g["inputs"] + g["outputs"], specs[name].inputs + specs[name].outputs, strict=True):
            assert tuple(entry["shape"]) == spec.shape and entry["dtype"] == "float32"
            assert set(d for d in entry["shape"] if isinstance(d, str)) <= set(m["dimensions"])


def test_graphs_are_valid_and_named_like_the_stages(folder: Path) -> None:
    for name in GRAPH_NAMES:
        proto = onnx.load(str(folder / f"{name}.onnx"))
        onnx.checker.check_model(proto)
        dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
        assert all(isinstance(d[2], str) and isinstance(d[3], str) for d in dims)  # dynamic H and W


@pytest.mark.parametrize(("size", "objects"), [((48, 56), 1), ((136, 88), 5)])
def test_dynamic_axes_work_at_other_sizes_than_traced(folder: Path, model: MevosNet, size: tuple[int, int],
                                                      objects: int) -> None:
    """Plain ONNX Runtime sessions at sizes and object counts unlike the trace (72x104, 3 objects)."""
    assert size != TRACE_SIZE
    specs = graph_specs(model.config)
    rng = np.random.default_rng(0)
    for name in GRAPH_NAMES:
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        feeds = {k: rng.random(s, dtype=np.float32) for k, s in specs[name].input_shapes(*size, objects).items()}
        outs = session.run(None, feeds)
        assert [o.shape for o in outs] == list(specs[name].output_shapes(*size, objects).values())
        with torch.inference_mode():
            ref = getattr(model, name)(*(torch.from_numpy(v) for v in feeds.values()))
        ref = ref if isinstance(ref, tuple) else (ref,)
        assert max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, ref, strict=True)) < 1e-4


def test_export_leaves_the_model_alone(model: MevosNet, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "e")
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_export_refuses_a_non_empty_folder_unless_forced(model: MevosNet, folder: Path, tmp_path: Path) -> None:
    from mevos.errors import InputError

    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="exists and is not empty"):
        export_onnx(model, tmp_path / "e")
    export_onnx(model, tmp_path / "e", force=True)
    assert not (tmp_path / "e" / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_cli_export(tmp_path: Path, model: MevosNet, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "small.pt"
    save_checkpoint(ckpt, model)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "encode_key.onnx" in out and "ONNX Runtime vs torch, max abs difference" in out
    export = load_onnx_export(tmp_path / "out")
    assert export.manifest["checkpoint"] == {"file": str(ckpt), "sha256": sha256_file(ckpt)}
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--force", "--no-check"]) == 0


def test_cached_export_is_keyed_by_checkpoint_and_reused(tmp_path: Path, model: MevosNet,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEVOS_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = tmp_path / "small.pt"
    save_checkpoint(ckpt, model)
    first = cached_export(ckpt)
    assert first.folder.parent == tmp_path / "cache" / "onnx"
    assert first.folder.name.startswith(sha256_file(ckpt)[:24])
    stamp = os.stat(first.paths["decode"]).st_mtime_ns
    assert resolve_export(ckpt).folder == first.folder
    assert os.stat(first.paths["decode"]).st_mtime_ns == stamp  # reused, not exported again
    first.paths["decode"].write_bytes(b"damaged")  # a damaged cache entry is exported again
    assert load_onnx_export(cached_export(ckpt).folder).folder == first.folder
    assert resolve_export(None).config == preset("small-xfeat")  # the default weights


def test_export_folder_honours_the_umask(folder: Path) -> None:
    """Not mkdtemp's 0700: a server running as another user must be able to read the export."""
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize("entry", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx", ""])
@pytest.mark.parametrize("verify", [True, False])
def test_manifest_files_must_stay_inside_the_folder(folder: Path, tmp_path: Path, entry: str, verify: bool) -> None:
    import shutil

    from mevos.errors import InputError

    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    outside = tmp_path / "outside.onnx"
    shutil.copy(copy / f"{GRAPH_NAMES[0]}.onnx", outside)
    manifest = json.loads((copy / ONNX_MANIFEST).read_text())
    manifest["graphs"][GRAPH_NAMES[0]]["file"] = entry
    manifest["graphs"][GRAPH_NAMES[0]]["sha256"] = sha256_file(outside)
    (copy / ONNX_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="not inside the export folder"):
        load_onnx_export(copy, verify=verify)
