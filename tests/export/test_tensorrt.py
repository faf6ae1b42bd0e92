"""TensorRT: the engine profile, the static check of the TensorRT code, and (where TensorRT and a
CUDA GPU exist) a real build and run against torch. TensorRT cannot be installed in CI, so the
engine tests skip there, with the reason."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mevos.errors import InputError, MissingExtraError
from mevos.export.manifest import Profile, parse_resolution
from mevos.export.typecheck import repair_line, repair_stub


def tensorrt_missing() -> str | None:
    """Why the engine tests cannot run here, or None."""
    from mevos.export.tensorrt import require_tensorrt

    try:
        require_tensorrt()
    except MissingExtraError:
        return "TensorRT is not installed (it is not installable in CI; see DESIGN.md)"
    if not torch.cuda.is_available():
        return "TensorRT engines need a CUDA GPU"
    return None


def test_import_does_not_need_tensorrt() -> None:
    code = "import sys, mevos.export, mevos.runtime.tensorrt_backend; sys.exit('tensorrt' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_tensorrt_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from mevos.export.tensorrt import build_engines, require_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'mevos\[tensorrt\]'"):
        require_tensorrt()
    with pytest.raises(MissingExtraError, match="building TensorRT engines"):
        build_engines("anywhere")


def test_profile() -> None:
    assert parse_resolution("480x856") == (480, 856)
    with pytest.raises(InputError, match="HEIGHTxWIDTH"):
        parse_resolution("480")
    with pytest.raises(InputError, match="multiples of 8"):
        parse_resolution("480x854")
    p = Profile.with_max_objects((128, 128), (480, 856), (1088, 1920), 1)
    assert (p.min_objects, p.opt_objects, p.max_objects) == (1, 1, 1)
    assert Profile.from_dict(p.to_dict()) == p
    with pytest.raises(InputError, match="min <= opt <= max"):
        Profile((480, 480), (240, 480), (960, 960))
    with pytest.raises(InputError, match="1 <= min <= opt <= max"):
        Profile(max_objects=1)  # opt_objects 2 > max


def test_profile_shapes_follow_the_graphs() -> None:
    from mevos.model.graphs import graph_specs
    from mevos.export.tensorrt import _profile_shapes
    from mevos.model import preset

    spec = graph_specs(preset("small"))["decode"]
    shapes = _profile_shapes(spec, Profile((128, 256), (480, 856), (1088, 1920), 1, 2, 8))
    assert shapes["readout"] == [[1, 128, 16, 32], [2, 128, 60, 107], [8, 128, 136, 240]]
    assert shapes["res2"] == [[1, 24, 32, 64], [1, 24, 120, 214], [1, 24, 272, 480]]


# ------------------------------------------------------------------------------ static check


def test_stub_repair() -> None:
    assert repair_line("    def f(self, in: list[int], out: int) -> int:\n") == \
        "    def f(self, in_: list[int], out: int) -> int:\n"
    assert repair_line("    def g(self, a: int = None, b: int) -> X:\n") == "    def g(self, a: int = None, b: int = ...) -> X:\n"
    assert repair_line("    def h(self, a: int = 1, *, b: int) -> X:\n") == "    def h(self, a: int = 1, *, b: int) -> X:\n"
    fixed = repair_stub("from __future__ import annotations\nbool: DataType\ndef f() -> bool: ...\n")
    assert fixed == "from __future__ import annotations\nimport builtins\nbool: DataType\ndef f() -> builtins.bool: ...\n"


@pytest.mark.slow  # about 10 s the first time (mypy builds its cache), 1 s after
def test_mypy_over_the_tensorrt_code() -> None:
    """What CI runs: mypy with the tensorrt-stubs package over the TensorRT modules."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install 'mevos[dev]')")
    from importlib import metadata

    try:
        metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    run = subprocess.run([sys.executable, "-m", "mevos.export.typecheck"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success: no issues found in 2 source files" in run.stdout


# ------------------------------------------------------------------------------ real engines


@pytest.mark.gpu
def test_build_and_run_engines_against_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)
    from mevos.model.graphs import GRAPH_NAMES, graph_specs
    from mevos.export.onnx import export_onnx
    from mevos.export.tensorrt import build_engines
    from mevos.model import build_model, preset
    from mevos.runtime.backend import TorchBackend, create_backend

    monkeypatch.setenv("MEVOS_CACHE_DIR", str(tmp_path / "cache"))
    model = build_model(preset("small"), seed=0)
    folder = export_onnx(model, tmp_path / "small").folder
    profile = Profile((64, 64), (120, 200), (256, 448), 1, 2, 4)
    manifest = build_engines(folder, precision="fp32", profile=profile, workspace_gib=1.0)
    assert manifest["tensorrt"]["precision"] == "fp32" and Path(manifest["tensorrt"]["timing_cache"]).is_file()
    trt_b = create_backend("tensorrt", str(folder), device="cuda", precision="fp32")
    torch_b = TorchBackend(model, device="cuda", precision="fp32")
    specs = graph_specs(model.config)
    for size, objects in [((64, 96), 1), ((120, 200), 2), ((240, 432), 4)]:
        for name in GRAPH_NAMES:
            inputs = [torch.rand(s, device="cuda") for s in specs[name].input_shapes(*size, objects).values()]
            got, ref = getattr(trt_b, name)(*inputs), getattr(torch_b, name)(*inputs)
            got, ref = (got, ref) if isinstance(got, tuple) else ((got,), (ref,))
            assert max(float((g - r).abs().max()) for g, r in zip(got, ref, strict=True)) < 1e-3
    with pytest.raises(InputError, match="outside the profile"):
        trt_b.encode_key(torch.rand(1, 3, 512, 512, device="cuda"))
    with pytest.raises(InputError, match="outside the profile"):
        trt_b.encode_value(torch.rand(1, 3, 64, 64, device="cuda"), torch.rand(5, 1, 64, 64, device="cuda"))
    (folder / "decode.engine").write_bytes(b"\0" * 64)
    with pytest.raises(InputError, match="does not match its checksum"):
        create_backend("tensorrt", str(folder), device="cuda")
