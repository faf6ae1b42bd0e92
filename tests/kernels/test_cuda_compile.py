"""The CUDA kernels compile with NVRTC for sm_80 and sm_90 without a GPU, and the cubin cache works.

Needs the `gpu` extra (cuda-core, cuda-python, nvidia-cuda-nvrtc), not a GPU. Skipped where the
extra is missing, except under CI=true, where a missing extra is a failure: CI must compile.
"""

from __future__ import annotations

import os

import pytest

from mevos.kernels import nvrtc


def _need_nvrtc() -> None:
    try:
        nvrtc.core()
        nvrtc.nvrtc_version()
    except Exception as exc:  # MissingExtraError, or an NVRTC library that does not load
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI must compile the CUDA kernels, but NVRTC is unusable: {exc}")
        pytest.skip(f"NVRTC through cuda.core is unavailable ({exc}); pip install 'mevos[gpu]'")


@pytest.fixture(autouse=True)
def _nvrtc_and_private_cache(monkeypatch, tmp_path):
    _need_nvrtc()
    monkeypatch.setenv("MEVOS_CACHE_DIR", str(tmp_path / "cache"))


TOPK_CONFIGS = [
    {"KEY_DIM": 128, "KEY_TYPE": 0},  # r18 / r50 keys, fp16
    {"KEY_DIM": 64, "KEY_TYPE": 0},  # the small preset
    {"KEY_DIM": 128, "KEY_TYPE": 1},  # bf16
    {"KEY_DIM": 128, "KEY_TYPE": 2},  # fp32 (3xTF32)
    {"KEY_DIM": 48, "KEY_TYPE": 0},  # an odd multiple of 16
    {"KEY_DIM": 256, "KEY_TYPE": 1},  # the widest: the tile shrinks to 32 cells
]
READOUT_CONFIGS = [{"VALUE_TYPE": 0}, {"VALUE_TYPE": 1}, {"VALUE_TYPE": 2}]


def _is_cubin(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("defines", TOPK_CONFIGS, ids=lambda d: f"C{d['KEY_DIM']}-t{d['KEY_TYPE']}")
def test_topk_affinity_compiles(arch, defines):
    cubin = nvrtc.compile_cubin("topk_affinity.cu", arch, defines, use_cache=False)
    assert _is_cubin(cubin)
    assert b"mevos_topk_partial" in cubin and b"mevos_topk_merge" in cubin


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("defines", READOUT_CONFIGS, ids=lambda d: f"v{d['VALUE_TYPE']}")
def test_readout_compiles(arch, defines):
    cubin = nvrtc.compile_cubin("readout.cu", arch, defines, use_cache=False)
    assert _is_cubin(cubin) and b"mevos_readout" in cubin


@pytest.mark.parametrize("key_dim", [40, 272])
def test_unsupported_key_dim_is_a_compile_error_that_says_why(key_dim):
    with pytest.raises(nvrtc.KernelUnavailable, match="KEY_DIM must be a multiple of 16"):
        nvrtc.compile_cubin("topk_affinity.cu", "sm_90", {"KEY_DIM": key_dim, "KEY_TYPE": 0}, use_cache=False)


def test_cubins_are_cached_by_source_hash_and_arch(monkeypatch, tmp_path):
    defines = {"VALUE_TYPE": 2}
    first = nvrtc.compile_cubin("readout.cu", "sm_80", defines)
    cached = sorted((tmp_path / "cache" / "kernels").glob("*.cubin"))
    assert len(cached) == 1 and cached[0].name.startswith("readout-sm_80-")

    # A cache hit compiles nothing.
    def no_compiler():
        raise AssertionError("compiled despite a cached cubin")

    monkeypatch.setattr(nvrtc, "core", no_compiler)
    assert nvrtc.compile_cubin("readout.cu", "sm_80", defines) == first
    monkeypatch.undo()
    monkeypatch.setenv("MEVOS_CACHE_DIR", str(tmp_path / "cache"))

    # Another arch, other defines or changed sources are other keys.
    nvrtc.compile_cubin("readout.cu", "sm_90", defines)
    nvrtc.compile_cubin("readout.cu", "sm_80", {"VALUE_TYPE": 0})
    assert len(list((tmp_path / "cache" / "kernels").glob("*.cubin"))) == 3
    key = nvrtc._cache_key("readout.cu", "sm_80", defines)
    real = nvrtc.KERNEL_DIR
    copy = tmp_path / "src"
    copy.mkdir()
    for name in nvrtc.SOURCES:
        (copy / name).write_bytes((real / name).read_bytes())
    (copy / "common.cuh").write_text((real / "common.cuh").read_text() + "\n// changed\n")
    monkeypatch.setattr(nvrtc, "KERNEL_DIR", copy)
    assert nvrtc._cache_key("readout.cu", "sm_80", defines) != key


def test_an_unwritable_cache_only_costs_a_recompile(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MEVOS_CACHE_DIR", str(blocker))
    assert _is_cubin(nvrtc.compile_cubin("readout.cu", "sm_90", {"VALUE_TYPE": 0}))
