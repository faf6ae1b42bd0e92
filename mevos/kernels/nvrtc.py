"""Compile the kernels' CUDA C with NVRTC (cuda.core), cache the cubins on disk, load and launch.

Cubins are cached under `mevos.env.cache_dir()/kernels/`, keyed by a hash of every source file,
the -D defines, the NVRTC version and the options, and named by GPU architecture; compiling
needs no GPU (CI compiles for sm_80 and sm_90). Loading and launching need one and go through
torch's device and current stream: the primary context torch uses is the one cuda.core binds.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from mevos.atomic import write_bytes_atomic
from mevos import env
from mevos.errors import MevosError, require

__all__ = ["KernelUnavailable", "KERNEL_DIR", "SOURCES", "core", "nvrtc_version", "compile_cubin", "get_kernel", "launch"]

KERNEL_DIR = Path(__file__).resolve().parent
#: Every file a kernel may include; all of them go into the cache key.
SOURCES = ("common.cuh", "topk_affinity.cu", "readout.cu")
#: Bump when the compile options below change in a way the key would not see.
_CACHE_FORMAT = "1"
_OPTIONS: dict[str, Any] = {"std": "c++17"}


class KernelUnavailable(MevosError):
    """The fused kernels cannot be compiled or loaded here (old GPU, NVRTC error, no driver)."""


def core() -> ModuleType:
    """The cuda.core module (Program, ProgramOptions, ObjectCode, Device, Stream, LaunchConfig,
    launch); raises MissingExtraError naming the `gpu` extra when cuda-core is not installed."""
    mod = require("cuda.core", "gpu", "the fused CUDA kernels", package="cuda-core")
    if not hasattr(mod, "Program"):  # cuda-core < 0.4 kept the API under .experimental
        mod = require("cuda.core.experimental", "gpu", "the fused CUDA kernels", package="cuda-core")
    return mod


def nvrtc_version() -> str:
    """NVRTC's version as 'major.minor' (part of the cache key: a new compiler recompiles)."""
    nvrtc = require("cuda.bindings.nvrtc", "gpu", "the fused CUDA kernels", package="cuda-python")
    err, major, minor = nvrtc.nvrtcVersion()
    if int(err) != 0:
        raise KernelUnavailable(f"NVRTC is not usable: nvrtcVersion returned {err}")
    return f"{major}.{minor}"


def _cache_key(source: str, arch: str, defines: dict[str, int]) -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (KERNEL_DIR / name).read_bytes() + b"\0")
    h.update(f"{source}|{arch}|{sorted(defines.items())}|{sorted(_OPTIONS.items())}|{nvrtc_version()}|{_CACHE_FORMAT}".encode())
    return h.hexdigest()[:24]


class _Log:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: object) -> None:
        self.parts.append(text.decode(errors="replace") if isinstance(text, bytes) else str(text))

    def __str__(self) -> str:
        return "".join(self.parts).replace("\x00", "").strip()


def compile_cubin(source: str, arch: str, defines: dict[str, int], *, use_cache: bool = True) -> bytes:
    """The cubin of mevos/kernels/<source> for arch ('sm_80', 'sm_90', ...) with -D defines.

    Read from the disk cache when present; else compiled with NVRTC (no GPU needed) and written
    to the cache atomically. Raises KernelUnavailable with NVRTC's log when compilation fails.
    """
    if source not in SOURCES or not source.endswith(".cu"):
        raise ValueError(f"unknown kernel source {source!r}")
    key = _cache_key(source, arch, defines)
    path = env.cache_dir() / "kernels" / f"{Path(source).stem}-{arch}-{key}.cubin"
    if use_cache and path.is_file():
        return path.read_bytes()
    cc = core()
    options = cc.ProgramOptions(
        arch=arch,
        include_path=str(KERNEL_DIR),
        define_macro=[(name, str(value)) for name, value in sorted(defines.items())],
        **_OPTIONS,
    )
    program = cc.Program((KERNEL_DIR / source).read_text(), "c++", options)
    log = _Log()
    try:
        cubin = bytes(program.compile("cubin", logs=log).code)
    except Exception as exc:
        raise KernelUnavailable(f"NVRTC could not compile {source} for {arch} with {defines}: {exc}\n{log}") from exc
    finally:
        program.close()
    if use_cache:
        _write_atomic(path, cubin)
    return cubin


def _write_atomic(path: Path, data: bytes) -> None:
    """Best effort: a cache that cannot be written only costs a recompile next time."""
    try:
        write_bytes_atomic(path, data)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Loading and launching (GPU only)


@dataclass(frozen=True)
class _Loaded:
    module: Any  # ObjectCode: keeps the library loaded while its kernels are in use
    kernel: Any


_loaded: dict[tuple[str, str, tuple[tuple[str, int], ...], int], _Loaded] = {}
_lock = threading.Lock()
_current = threading.local()


def _arch(device_index: int) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    if (major, minor) < (8, 0):
        raise KernelUnavailable(
            f"the fused kernels need compute capability 8.0 or newer (cp.async, bf16/tf32 mma); "
            f"cuda:{device_index} has {major}.{minor}"
        )
    return f"sm_{major}{minor}"


def _bind(device_index: int) -> None:
    """Make cuda.core use torch's (primary) context of the device on this thread, once."""
    bound = getattr(_current, "devices", None)
    if bound is None:
        bound = _current.devices = set()
    if device_index not in bound:
        core().Device(device_index).set_current()
        bound.add(device_index)


def get_kernel(source: str, entry: str, defines: dict[str, int], device_index: int) -> Any:
    """The cuda.core Kernel `entry` of `source` compiled with `defines` for the device's arch."""
    key = (source, entry, tuple(sorted(defines.items())), device_index)
    loaded = _loaded.get(key)
    if loaded is not None:
        return loaded.kernel
    with _lock:
        loaded = _loaded.get(key)
        if loaded is None:
            cubin = compile_cubin(source, _arch(device_index), defines)
            cc = core()
            try:
                _bind(device_index)
                module = cc.ObjectCode.from_cubin(cubin, name=source)
                loaded = _Loaded(module, module.get_kernel(entry))
            except Exception as exc:
                raise KernelUnavailable(f"cannot load {entry} from {source} on cuda:{device_index}: {exc}") from exc
            _loaded[key] = loaded
    return loaded.kernel


def launch(kernel: Any, device_index: int, grid: tuple[int, ...], block: int, *args: Any) -> None:
    """Launch on torch's current stream of the device. Pointers are Python ints (data_ptr()),
    scalars numpy scalars of the kernel's C types (np.int32, np.float32, np.int64, np.uint64).

    A failure of cuda.core (binding the context, wrapping the stream, the launch itself) is one
    KernelUnavailable naming the kernel, on which mevos.kernels.ops turns the kernels off and
    answers with the reference."""
    import torch

    cc = core()
    try:
        _bind(device_index)
        handle = torch.cuda.current_stream(device_index).cuda_stream
        stream = cc.LEGACY_DEFAULT_STREAM if handle == 0 else cc.Stream.from_handle(handle)
        cc.launch(stream, cc.LaunchConfig(grid=grid, block=block), kernel, *args)
    except Exception as exc:
        name = getattr(kernel, "name", None) or type(kernel).__name__
        raise KernelUnavailable(f"cannot launch {name} on cuda:{device_index} (grid {grid}, block {block}): "
                                f"{type(exc).__name__}: {exc}") from exc
