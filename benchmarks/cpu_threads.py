"""How many threads `mevos segment` should use on a shared CPU: the measurement behind
mevos.runtime.threads.default_threads.

Runs `mevos segment` (20 frames of a DAVIS 480p sequence, default settings) with --threads 1, 2,
... up to the usable cores, alternating, with and without one extra busy process (a Python spin
loop started by this script: "another job on the machine"), and records wall time, the load
average, and what the default rule would have chosen at that moment.

    python benchmarks/cpu_threads.py          # writes benchmarks/results/cpu_threads.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mevos.bench.environment import load_average, machine_info, versions  # noqa: E402
from mevos.runtime.threads import default_threads  # noqa: E402

DAVIS = REPO.parent / "shared" / "data" / "davis2016"


def segment(threads: int, frames: int, sequence: str, out: Path) -> float:
    cmd = [sys.executable, "-m", "mevos", "segment", str(DAVIS / "JPEGImages" / "480p" / sequence),
           "--mask", str(DAVIS / "Annotations" / "480p" / sequence / "00000.png"), "--out", str(out), "--force",
           "--overlay", "none", "--max-frames", str(frames), "--threads", str(threads)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--sequence", default="car-shadow")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per condition")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    usable = len(os.sched_getaffinity(0))
    counts = list(range(1, usable + 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (False, True):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                if busy:
                    time.sleep(5)
                for r in range(args.rounds):
                    for n in counts:
                        load, rule = load_average(), default_threads()
                        seconds = segment(n, args.frames, args.sequence, Path(tmp) / "out")
                        rows.append({"extra_busy_process": busy, "threads": n, "round": r, "seconds": seconds,
                                     "load_average_before": load, "rule_would_choose": rule})
                        print(f"busy job {busy}: --threads {n}: {seconds:.1f} s (load {load}, rule {rule})", flush=True)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
    report = {
        "benchmark": "cpu_threads",
        "command": "python benchmarks/cpu_threads.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "device": "cpu", "versions": versions(),
        "what": f"mevos segment, {args.frames} frames of {args.sequence}, default settings, wall time per run",
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cpu_threads.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
