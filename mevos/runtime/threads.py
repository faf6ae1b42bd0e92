"""How many CPU threads a command that runs the model gives torch: one rule, used everywhere.

The rule (`default_threads`): the cores this process may run on (`os.sched_getaffinity`) less
the ones other processes keep busy (the 1-minute load average, rounded), at least 1 and at most
torch's own default (the physical cores). Why: torch's OpenMP threads wait for each other at the
end of every op, so one thread descheduled by another job stalls them all; on a 2-core machine
with one busy job, 20 frames of car-shadow took 78 s with torch's 2 threads and 7.9 s with one
(issue 12). benchmarks/results/cpu_threads.json (`mevos segment`, 20 frames, load 3-4 from other
work on 2 cores): 5.3-5.5 s with 1 thread against 15-19 s with 2; with one more busy process
6.9-11.5 s against 31-44 s. The rule chose 1 in every case. On an idle machine it gives every core.
"""

from __future__ import annotations

import argparse
import os

import torch

from mevos.errors import UsageError

__all__ = ["default_threads", "configure_threads", "add_threads_argument"]

#: torch's default, read once at import before anything changes it (physical cores, or OMP_NUM_THREADS).
_TORCH_DEFAULT = torch.get_num_threads()


def default_threads(processes: int = 1) -> int:
    """Threads per process for `processes` processes started together on this machine: the
    usable cores not busy with other work, shared out, clamped to [1, torch's default]."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:  # no load average on this platform: assume the cores are free
        busy = 0
    free = max(1, usable - busy) // max(1, processes)
    return max(1, min(free, _TORCH_DEFAULT))


def configure_threads(requested: int | None = None, processes: int = 1) -> int:
    """Set torch's intra-op threads to `requested` (>= 1), or to default_threads(processes) when
    None; return the number set."""
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 1):
        raise UsageError(f"--threads must be an int >= 1, got {requested!r}")
    n = requested if requested is not None else default_threads(processes)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def add_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--threads N, default None = default_threads()."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of torch (default: the usable cores less those other processes "
                             "keep busy, by the 1-minute load average; at least 1)")
