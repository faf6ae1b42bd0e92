"""The CPU top-k affinity: a small C++ library built with the system compiler on first use.

Same contract as `mevos.kernels.reference.topk_affinity` (the oracle): same top-k sets, weights
to 1e-5, lower index first on ties, radius only for non-pinned frames, UsageError on bad or
non-finite input. What makes it fast: with a radius, a non-pinned memory frame is only scored
over the (2r+1) x (2r+1) window of each query cell (625 candidates at r = 12) instead of a
masked full block, and the selection runs in registers next to the scores instead of through
torch.topk on a materialised matrix. Pinned frames and radius=None are scored in full by the
same micro-kernel (a blocked GEMM with the selection fused in).

Build: `csrc/topk_cpu.cpp` is compiled with $MEVOS_CXX (else c++/g++/clang++ on PATH) into
the cache (`mevos.env.cache_dir()/cpu/`), named by a hash of the source, the compiler's version,
the flags and the CPU's feature flags; the library is written under a temporary name and renamed
into place, so concurrent first uses in several processes each build and the last rename wins
with an identical file. No compiler or a failed build: `available()` is False, `reason()` says
why, and `topk_affinity` runs the reference after one RuntimeWarning.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from mevos import env
from mevos.errors import UsageError
from mevos.kernels import reference
from mevos.kernels.reference import _NONFINITE, _check_affinity_args, _check_chunk_size, check_readout_args

__all__ = ["topk_affinity", "readout", "available", "reason", "library_path"]

SOURCE = Path(__file__).with_name("csrc") / "topk_cpu.cpp"
_ABI = 2
# -O3 -march=native: the micro-kernel's vectors fill the machine's registers (the library is
# keyed by the CPU's flags, so a cache copied to another machine is rebuilt, not crashed).
# -ffp-contract=fast: one FMA per term, as the source's comments assume; no -ffast-math (NaN
# and inf must survive to be reported).
_FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=gnu++17", "-shared", "-fPIC", "-pthread")
_warned: set[str] = set()


class _Unavailable(Exception):
    pass


def _compiler() -> str | None:
    """The compiler to use: $MEVOS_CXX, or c++/g++/clang++ on PATH; None if none is found."""
    chosen = env.value("MEVOS_CXX")
    if chosen:  # used as given: a wrong path must fail visibly, not fall through to another
        return shutil.which(chosen) or chosen
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.machine() + platform.processor()


def _build(compiler: str, source_path: Path = SOURCE) -> Path:
    """Compile a C++ source (default SOURCE) with compiler into the cache as a shared library named
    after it (or find it there); raise _Unavailable. Also builds `train_cpu.cpp`."""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise _Unavailable(f"C++ compiler {compiler!r} does not run ({exc})") from exc
    source = source_path.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(_FLAGS).encode(), _cpu_flags().encode()]))
    folder = env.cache_dir() / "cpu"
    target = folder / f"{source_path.stem}-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise _Unavailable(f"cannot write the kernel cache {folder} ({exc}); set MEVOS_CACHE_DIR") from exc
    try:
        done = subprocess.run([compiler, *_FLAGS, str(source_path), "-o", tmp], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise _Unavailable(f"{compiler} failed to build {source_path.name}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: another process sees no library or a whole one
    except (OSError, subprocess.SubprocessError) as exc:
        raise _Unavailable(f"building {source_path.name} with {compiler} failed ({exc})") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _open(compiler: str | None, source_path: Path, abi_symbol: str, abi: int
          ) -> tuple[ctypes.CDLL | None, str | None, Path | None]:
    """Build (or find) source_path's library and load it: (library, None, path), or (None, reason,
    None) when there is no compiler, the build fails or the library's `abi_symbol()` is not abi.
    Also opens `train_cpu.cpp` (mevos.kernels.train_cpu)."""
    if compiler is None:
        return None, "no C++ compiler found (install g++, or set MEVOS_CXX)", None
    try:
        path = _build(compiler, source_path)
        lib = ctypes.CDLL(str(path))
        if getattr(lib, abi_symbol)() != abi:
            raise _Unavailable(f"{path} has another ABI version; delete it")
    except (_Unavailable, OSError) as exc:
        return None, str(exc), None
    return lib, None, path


def _warn_once(warned: set[str], message: str, stacklevel: int) -> None:
    """warnings.warn(message, RuntimeWarning) the first time message is added to warned."""
    if message not in warned:
        warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)


@functools.cache
def _load(compiler: str | None) -> tuple[ctypes.CDLL | None, str | None, Path | None]:
    """(library, None, path) or (None, reason, None); cached per compiler for the process."""
    lib, why, path = _open(compiler, SOURCE, "mevos_cpu_abi_version", _ABI)
    if lib is None:
        return None, why, None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.mevos_topk_affinity.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, i64, ptr, ptr]
    lib.mevos_topk_affinity.restype = ctypes.c_int
    lib.mevos_readout.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, ptr]
    lib.mevos_readout.restype = ctypes.c_int
    return lib, None, path


def available() -> bool:
    """Whether the compiled operator can run in this process (builds it on first call)."""
    return _load(_compiler())[0] is not None


def reason() -> str | None:
    """Why the compiled operator is unavailable; None when it is available."""
    return _load(_compiler())[1]


def library_path() -> Path | None:
    """The compiled library in the cache, or None when unavailable."""
    return _load(_compiler())[2]


def _library_or_warn() -> ctypes.CDLL | None:
    lib, why, _ = _load(_compiler())
    if lib is None:
        _warn_once(_warned, f"compiled CPU affinity unavailable: {why}; using the PyTorch reference", stacklevel=3)
    return lib


def topk_affinity(
    query: Tensor,
    memory: Tensor,
    *,
    k: int,
    temperature: float,
    grid: tuple[int, int],
    pinned: Tensor | None = None,
    radius: int | None = None,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Top-k affinity of each query position over the memory, on the CPU.

    query: P x C keys; memory: T x P x C keys (same grid h x w, P = h*w), any float dtype,
    computed in float32; pinned: bool T (None = all pinned); radius: window for non-pinned
    frames (None = none). Returns (weights P x k float32, indices P x k int64, m = t*P + p),
    exactly as `mevos.kernels.reference.topk_affinity`, whose docstring is the contract.
    chunk_size is validated and ignored (the operator's extra memory is O(threads * k * 16)).
    Runs on torch.get_num_threads() threads of its own.
    Falls back to the reference, with one RuntimeWarning, when the operator cannot be built.
    """
    flags = _check_affinity_args(query, memory, k, temperature, grid, pinned, radius)
    _check_chunk_size(chunk_size)
    if query.device.type != "cpu":
        raise UsageError(f"mevos.kernels.cpu needs CPU tensors, got {query.device}")
    lib = _library_or_warn()
    if lib is None:
        return reference.topk_affinity(
            query, memory, k=k, temperature=temperature, grid=grid, pinned=pinned, radius=radius, chunk_size=chunk_size
        )
    h, w = grid
    T, P, C = memory.shape
    if radius is not None and radius >= max(h, w) - 1:
        radius = None  # a window covering the whole grid is no limit (as in the reference)
    # Scaled exactly as the reference scales it, so both rank the same float32 scores.
    q = (query.float() / temperature).contiguous()
    m = memory.float().contiguous()
    pin = torch.tensor(flags, dtype=torch.uint8)
    out_w = torch.empty(P, k, dtype=torch.float32)
    out_i = torch.empty(P, k, dtype=torch.int64)
    n = torch.get_num_threads()
    # ctypes releases the GIL for the call.
    bad = lib.mevos_topk_affinity(
        q.data_ptr(), m.data_ptr(), pin.data_ptr(), T, P, C, h, w, k,
        -1 if radius is None else radius, max(1, int(n)), out_w.data_ptr(), out_i.data_ptr(),
    )
    if bad:
        raise UsageError(_NONFINITE)
    return out_w, out_i


def readout(weights: Tensor, indices: Tensor, memory: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Weighted sum of memory rows, on the CPU: `mevos.kernels.reference.readout`'s contract.

    weights P x k, indices P x k (int64, -1 = empty slot), memory M x C (any float dtype).
    Returns P x C float32: out[p] = sum_j weights[p, j] * memory[indices[p, j]], summed in slot
    order straight from the memory rows (the reference gathers chunk x k x C rows first).
    chunk_size is validated and ignored. Falls back to the reference like topk_affinity.
    """
    check_readout_args(weights, indices, memory, chunk_size)
    if memory.device.type != "cpu":
        raise UsageError(f"mevos.kernels.cpu needs CPU tensors, got {memory.device}")
    lib = _library_or_warn()
    if lib is None:
        return reference.readout(weights, indices, memory, chunk_size=chunk_size)
    P, k = weights.shape
    M, C = memory.shape
    w = weights.float().contiguous()
    i = indices.contiguous()
    m = memory.float().contiguous()
    out = torch.empty(P, C, dtype=torch.float32)
    if lib.mevos_readout(w.data_ptr(), i.data_ptr(), m.data_ptr(), P, k, M, C, torch.get_num_threads(), out.data_ptr()):
        raise UsageError(f"indices must lie in [-1, {M - 1}] for a memory of {M} rows")
    return out


if __name__ == "__main__":  # `python -m mevos.kernels.cpu`: build now (make install does), say what happened
    if available():
        print(f"mevos CPU affinity operator: {library_path()}")
    else:
        print(f"mevos CPU affinity operator unavailable, the PyTorch reference will run: {reason()}")
