"""Clocks and memory meters: every clock read follows a device synchronisation, warm-up runs are
separate from timed runs, and peak memory is read per measured section."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def sync(device: torch.device) -> None:
    """Wait for all queued work on `device` (a no-op on the CPU, where every op is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """perf_counter after synchronising `device`."""
    sync(device)
    return time.perf_counter()


def summarize(ms: Sequence[float]) -> dict[str, float | int]:
    """Statistics of a list of milliseconds: median, mean, p90, min, max, n."""
    xs = sorted(float(x) for x in ms)
    if not xs:
        return {"median": float("nan"), "mean": float("nan"), "p90": float("nan"), "min": float("nan"),
                "max": float("nan"), "n": 0}
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return {"median": statistics.median(xs), "mean": statistics.fmean(xs), "p90": p90, "min": xs[0], "max": xs[-1],
            "n": len(xs)}


class Iterations:
    """`for record in Iterations(warmup, repeat, budget_s): ...` runs the body warmup + repeat
    times; `record` is False for the warm-up passes. With a budget (seconds), an expensive
    measurement stops early: after one warm-up pass once half the budget is spent, and after
    `min_timed` timed passes once all of it is. The statistics' n says how many ran."""

    def __init__(self, warmup: int, repeat: int, budget_s: float | None = None, min_timed: int = 2) -> None:
        self.warmup, self.repeat, self.budget, self.min_timed = warmup, repeat, budget_s, min_timed

    def __iter__(self) -> Iterator[bool]:
        start, timed, i, warmup = time.perf_counter(), 0, 0, self.warmup
        while timed < self.repeat:
            warm = i < warmup
            yield not warm
            i += 1
            spent = time.perf_counter() - start
            if warm:
                if self.budget is not None and spent > self.budget / 2:
                    warmup = i
                continue
            timed += 1
            if self.budget is not None and spent > self.budget and timed >= min(self.min_timed, self.repeat):
                return


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int) -> list[float]:
    """`warmup` untimed calls, then `repeat` timed ones; milliseconds per call, the device
    synchronised before each clock read."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = clock(device)
        fn()
        out.append((clock(device) - t0) * 1e3)
    return out


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_kb() -> int | None:
    try:
        import psutil  # optional: only where installed
    except ImportError:
        return _status_kb("VmRSS")
    return int(psutil.Process().memory_info().rss // 1024)


class HostPeak:
    """Peak resident set size of this process over a `with` block, in MiB.

    Method: the kernel's high-water mark VmHWM, reset at the start by writing 5 to
    /proc/self/clear_refs (Linux >= 4.0); where that is refused, a thread samples the RSS every
    `interval` seconds (psutil if installed, else /proc/self/status VmRSS) and keeps the maximum.
    torch's allocations are outside tracemalloc's view, so neither getrusage's lifetime peak nor
    tracemalloc would do. `method` says which one ran.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_mb: float | None = None
        self.method = "none"
        self._stop = threading.Event()
        self._max_kb = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HostPeak:
        try:
            _CLEAR_REFS.write_text("5")
            if _status_kb("VmHWM") is not None:
                self.method = "VmHWM reset via /proc/self/clear_refs"
                return self
        except OSError:
            pass
        self.method = f"RSS sampled every {self.interval * 1e3:g} ms"
        self._max_kb = _rss_kb() or 0
        self._thread = threading.Thread(target=self._sample, name="mevos-bench-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max_kb = max(self._max_kb, _rss_kb() or 0)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            kb = max(self._max_kb, _rss_kb() or 0)
        else:
            kb = _status_kb("VmHWM") or 0
        self.peak_mb = kb / 1024 if kb else None


class DevicePeak:
    """Peak memory torch's CUDA allocator handed out over a `with` block, in MiB (None on the
    CPU). Memory that ONNX Runtime or TensorRT allocate themselves is not counted: `method` says so."""

    method = "torch.cuda.max_memory_allocated (torch's caching allocator only)"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb: float | None = None

    def __enter__(self) -> DevicePeak:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20


class Meters:
    """HostPeak and DevicePeak together: `with Meters(device) as m: ...; m.memory()`."""

    def __init__(self, device: torch.device) -> None:
        self.host, self.dev = HostPeak(), DevicePeak(device)

    def __enter__(self) -> Meters:
        self.host.__enter__()
        self.dev.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.dev.__exit__(*exc)
        self.host.__exit__(*exc)

    def memory(self) -> dict[str, float | None]:
        return {"peak_host_mb": self.host.peak_mb, "peak_device_mb": self.dev.peak_mb}
