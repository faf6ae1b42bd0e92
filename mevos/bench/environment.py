"""Where a benchmark ran: the machine, the device, and the versions of everything that matters."""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from typing import Any

import torch

from mevos import __version__


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes compete for the cores: read the CPU
    figures with this in mind)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_seconds() -> float:
    """CPU time this process has used (all threads, user + system)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_info() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_gb": _memory_gb(),
        "load_average_start": load_average(),
    }


def device_info(device: torch.device) -> dict[str, Any]:
    """type, name, compute capability (CUDA), memory, torch CPU threads."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        p = torch.cuda.get_device_properties(index)
        return {"type": "cuda", "name": p.name, "capability": f"{p.major}.{p.minor}",
                "memory_gb": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
                "torch_threads": torch.get_num_threads()}
    return {"type": "cpu", "name": _cpu_model(), "capability": None, "memory_gb": _memory_gb(),
            "torch_threads": torch.get_num_threads()}


def device_slug(info: dict[str, Any]) -> str:
    """A file-name-safe short name of the device: 'cpu', 'nvidia-h100-80gb-hbm3', ..."""
    if info["type"] == "cpu":
        return "cpu"
    return "".join(c if c.isalnum() else "-" for c in str(info["name"]).lower()).strip("-").replace("--", "-")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    ort = _version("onnxruntime") or _version("onnxruntime-gpu")
    return {
        "python": platform.python_version(),
        "mevos": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onnxruntime": ort,
        "tensorrt": _version("tensorrt"),
        "numpy": _version("numpy"),
        "grpcio": _version("grpcio"),
        "cuda_core": _version("cuda-core"),
        "executable": sys.executable,
    }
