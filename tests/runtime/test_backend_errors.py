"""Bad input to the exported backends: each gets one MevosError whose message names the fix.

Missing or corrupt ONNX and engine files, manifests whose checksums do not match, inputs outside
an engine's profile, engines for another GPU or TensorRT, unknown backend names, and backends
whose package is not installed. The engine checks run without TensorRT: they are plain functions
over the manifest.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mevos.cli import main  # noqa: E402
from mevos.errors import InputError, MevosError, MissingExtraError, UsageError  # noqa: E402
from mevos.export.manifest import (  # noqa: E402
    ENGINE_MANIFEST,
    ONNX_MANIFEST,
    Profile,
    check_engine_target,
    load_onnx_export,
    sha256_file,
    verify_file,
    write_json_atomic,
)
from mevos.export.onnx import export_onnx  # noqa: E402
from mevos.model import build_model, preset  # noqa: E402
from mevos.runtime.backend import create_backend  # noqa: E402
from mevos.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(build_model(preset("small")), tmp_path_factory.mktemp("pristine") / "small").folder


@pytest.fixture
def export(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of a good export, to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "small"))


def ort(folder: Path) -> OnnxRuntimeBackend:
    return create_backend("onnxruntime", str(folder))  # type: ignore[return-value]


def test_good_export_loads(export: Path) -> None:
    assert ort(export).config == preset("small")


def test_missing_onnx_file(export: Path) -> None:
    (export / "decode.onnx").unlink()
    with pytest.raises(InputError, match=r"decode\.onnx is missing .*mevos export --checkpoint CKPT --out .* --force"):
        ort(export)


def test_changed_onnx_file_fails_its_checksum(export: Path) -> None:
    with open(export / "encode_key.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match=r"encode_key\.onnx does not match its checksum in manifest\.json.*re-export"):
        ort(export)


def test_corrupt_onnx_file_with_matching_manifest(export: Path) -> None:
    """A file that is not ONNX, listed with its own checksum: ONNX Runtime's refusal, named."""
    path = export / "encode_value.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    manifest = json.loads((export / ONNX_MANIFEST).read_text())
    manifest["graphs"]["encode_value"]["sha256"] = sha256_file(path)
    write_json_atomic(export / ONNX_MANIFEST, manifest)
    with pytest.raises(InputError, match=r"ONNX Runtime cannot load .*encode_value\.onnx .*re-export"):
        ort(export)


def test_missing_manifest(export: Path) -> None:
    (export / ONNX_MANIFEST).unlink()
    with pytest.raises(InputError, match=r"manifest\.json does not exist.*mevos export"):
        ort(export)


@pytest.mark.parametrize("text", ["{not json", '{"format": "something-else", "version": 1}', "[]"])
def test_corrupt_manifest(export: Path, text: str) -> None:
    (export / ONNX_MANIFEST).write_text(text)
    with pytest.raises(InputError, match=r"manifest.*re-export it with: mevos export"):
        ort(export)


def test_manifest_missing_a_graph(export: Path) -> None:
    manifest = json.loads((export / ONNX_MANIFEST).read_text())
    del manifest["graphs"]["decode"]
    write_json_atomic(export / ONNX_MANIFEST, manifest)
    with pytest.raises(InputError, match=r"manifest\.json is damaged .*decode"):
        ort(export)


def test_model_path_that_is_an_onnx_file_or_missing(export: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="give the export folder"):
        ort(export / "decode.onnx")
    with pytest.raises(InputError, match=r"does not exist: give a checkpoint \(\.pt\) or a folder made by `mevos export`"):
        ort(tmp_path / "nothing")


def test_unknown_backend_name() -> None:
    with pytest.raises(UsageError, match=r"unknown backend 'onnx'; choose one of: torch, onnxruntime, .*tensorrt"):
        create_backend("onnx", None)


def test_onnxruntime_not_installed(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an uninstalled package looks like to import
    with pytest.raises(MissingExtraError, match=r"'onnxruntime' is needed for the onnxruntime backend .*mevos\[onnx\]"):
        ort(export)


def test_tensorrt_not_installed() -> None:
    from mevos.export.tensorrt import require_tensorrt

    try:
        require_tensorrt()
    except MissingExtraError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(MissingExtraError, match=r"'tensorrt' is needed .*pip install 'mevos\[tensorrt\]'"):
        create_backend("tensorrt", None, device="cuda")


def test_inputs_the_graph_cannot_take(export: Path) -> None:
    import torch

    with pytest.raises(UsageError, match=r"ONNX Runtime cannot run encode_value on image \(1, 3, 64, 64\), masks "
                                         r"\(2, 1, 64, 60\) .*multiples of 8"):
        ort(export).encode_value(torch.rand(1, 3, 64, 64), torch.rand(2, 1, 64, 60))


def test_onnxruntime_settings_that_cannot_work(export: Path) -> None:
    with pytest.raises(UsageError, match="for fp16 use --backend tensorrt"):
        create_backend("onnxruntime", str(export), precision="fp16")
    with pytest.raises(UsageError, match="onnxruntime-trt runs on CUDA only"):
        create_backend("onnxruntime-trt", str(export), device="cpu")


# ------------------------------------------------------------------------------ engines


def engine_manifest(folder: Path) -> dict:
    """engine.json as the builder writes it, for a fake engine file (the checks read no engine)."""
    (folder / "decode.engine").write_bytes(b"serialized engine")
    return {
        "format": "mevos-export", "version": 1, "kind": "tensorrt",
        "tensorrt": {"version": "10.13.0.35", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0",
                     "precision": "fp16", "profile": Profile().to_dict()},
        "graphs": {"decode": {"file": "decode.engine", "sha256": sha256_file(folder / "decode.engine")}},
    }


def test_engine_for_another_gpu_or_tensorrt(export: Path) -> None:
    manifest = engine_manifest(export)
    check_engine_target(manifest, "10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0", export)
    with pytest.raises(InputError, match=r"built for a NVIDIA A100-SXM4-80GB \(sm_80; this is a NVIDIA H100 80GB "
                                         r"HBM3, sm_90\).*mevos export --out .* --format tensorrt --rebuild"):
        check_engine_target(manifest, "10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0", export)
    with pytest.raises(InputError, match=r"built for TensorRT 10.13.0.35 \(this is TensorRT 10.9.0.34\).*--rebuild"):
        check_engine_target(manifest, "10.9.0.34", "NVIDIA A100-SXM4-80GB", "8.0", export)


def test_engine_checksum_mismatch(export: Path) -> None:
    from mevos.export.manifest import rebuild_hint

    entry = engine_manifest(export)["graphs"]["decode"]
    assert verify_file(export, entry, ENGINE_MANIFEST, rebuild_hint(export)) == export / "decode.engine"
    (export / "decode.engine").write_bytes(b"serialized engine, damaged")
    with pytest.raises(InputError, match=r"decode\.engine does not match its checksum in engine\.json.*--rebuild"):
        verify_file(export, entry, ENGINE_MANIFEST, rebuild_hint(export))
    (export / "decode.engine").unlink()
    with pytest.raises(InputError, match=r"decode\.engine is missing .*--rebuild"):
        verify_file(export, entry, ENGINE_MANIFEST, rebuild_hint(export))


def test_input_outside_the_engine_profile(tmp_path: Path) -> None:
    profile = Profile((128, 128), (480, 856), (720, 1280), 1, 2, 4)
    profile.check(480, 856, 2, tmp_path)
    profile.check(128, 1280, 1, tmp_path)
    with pytest.raises(InputError, match=r"resolution 1088x1920 .* outside the profile .* 128x128 to 720x1280; "
                                         r"resize the input \(e\.g\. --short-side\) or rebuild"):
        profile.check(1088, 1920, 1, tmp_path)
    with pytest.raises(InputError, match=r"resolution 120x200"):
        profile.check(120, 200, 1, tmp_path)
    with pytest.raises(InputError, match=r"5 objects is outside the profile .* \(1 to 4\); track fewer objects or "
                                         r"rebuild with: .* --max-objects 5"):
        profile.check(480, 856, 5, tmp_path)


def test_missing_engines_in_an_onnx_export(export: Path) -> None:
    from mevos.export.manifest import read_json

    with pytest.raises(InputError, match=r"engine\.json does not exist: .* holds no TensorRT engines; build them with: "
                                         r"mevos export --out .* --format tensorrt --rebuild"):
        read_json(export / ENGINE_MANIFEST, "TensorRT engines",
                  f"build them with: mevos export --out {export} --format tensorrt --rebuild")


# ------------------------------------------------------------------------------ through the CLI


def test_cli_errors_are_one_line_with_the_fix(export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mevos.export.tensorrt import require_tensorrt

    assert main(["export", "--out", str(export)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exists and is not empty; choose another --out or pass --force" in err
    assert main(["export", "--out", str(tmp_path / "x"), "--precision", "fp16"]) == 2
    assert "--format tensorrt" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "x"), "--format", "tensorrt", "--max-resolution", "1000x77"]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    try:
        require_tensorrt()
    except MevosError:
        assert main(["export", "--out", str(tmp_path / "x"), "--format", "tensorrt"]) == 2
        assert "pip install 'mevos[tensorrt]'" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()  # nothing written before the check


def test_load_onnx_export_of_a_non_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"is not an export folder; create one with: mevos export"):
        load_onnx_export(tmp_path / "absent")
