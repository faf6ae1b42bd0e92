"""End to end on the CPU: the tracker of this tree against the code before issue 12, one run.

Each configuration runs in a fresh worker process per tree (PYTHONPATH = that tree), one after
the other, same machine, same threads: the default weights on a DAVIS 480p sequence, for 1
object (the DAVIS mask) and 4 objects (the DAVIS mask cut into quadrants around its centre), at
three working sizes given to both trees explicitly (`CONFIGS`: 240 with radius 4, the defaults
before; 320 with radius 5, the defaults now; 480). What is timed is `Tracker.step`, the per-frame
loop of `mevos segment` (frame decoding and PNG writing, identical in both trees, are outside);
the stages are timed through wrappers around the backend's encoders and kernels.ops (what the
tracker calls), never a copy of the loop. Steady state = the frames after the memory is full.
The label maps of the two trees are compared pixel by pixel over every frame.

    .venv/bin/python benchmarks/cpu_endtoend.py --cli   # makes a worktree at bf8564f when missing

--cli also runs the real `mevos segment` command over the whole sequence in each tree (wall time,
and its PNGs compared pixel by pixel).

Writes benchmarks/results/cpu_endtoend.json and .png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAVIS = REPO.parent / "shared" / "data" / "davis2016"
STAGES = ("encode_key", "affinity", "readout", "encode_value")
# Working sizes, each run with the same explicit settings in both trees (so the label maps compare):
# short side, radius in feature cells, what the settings are.
CONFIGS = {
    "240p": (240, 4, "the defaults before (working short side 240, radius 4)"),
    "320p": (320, 5, "the defaults now (working short side 320, radius 5)"),
    "480p": (480, 5, "--short-side 480 (radius 5)"),
}
# The settings the `mevos segment` comparison gives the old tree: today's defaults.
DEFAULT_FLAGS = ["--short-side", "320", "--radius", "5"]


# --------------------------------------------------------------------------------------------
# Worker: runs in the tree under test (its mevos first on PYTHONPATH).


def _four_objects(mask):  # noqa: ANN001, ANN202
    import numpy as np

    ys, xs = np.nonzero(mask)
    cy, cx = int(ys.mean()), int(xs.mean())
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    quadrant = 1 + (yy >= cy).astype(np.uint8) * 2 + (xx >= cx).astype(np.uint8)
    return np.where(mask > 0, quadrant, 0).astype(np.uint8)


def worker(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import mevos
    from mevos.data.results import read_first_mask
    from mevos.data.video import open_frames
    from mevos.kernels import ops
    from mevos.runtime.backend import create_backend
    from mevos.runtime.tracker import Tracker, TrackerConfig

    source = open_frames(str(DAVIS / "JPEGImages" / "480p" / args.sequence))
    mask = read_first_mask(str(DAVIS / "Annotations" / "480p" / args.sequence / "00000.png"), source)
    mask = np.asarray(mask)
    if args.objects == 4:
        mask = _four_objects(mask)
    frames = [np.asarray(f) for _, f in zip(range(args.frames), source)]
    backend = create_backend("torch", None, device="cpu", precision="auto")
    tracker = Tracker(backend, TrackerConfig(short_side=args.short_side, radius=args.radius))

    spent = dict.fromkeys(STAGES, 0.0)

    def timer(name, fn):  # noqa: ANN001, ANN202
        def wrapped(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapped

    backend.encode_key = timer("encode_key", backend.encode_key)
    backend.encode_value = timer("encode_value", backend.encode_value)
    ops.topk_affinity = timer("affinity", ops.topk_affinity)
    ops.readout = timer("readout", ops.readout)

    per_frame, stages, labels = [], [], []
    for i, frame in enumerate(frames):
        for k in spent:
            spent[k] = 0.0
        t = time.perf_counter()
        result = tracker.step(frame, masks=mask if i == 0 else None)
        per_frame.append(time.perf_counter() - t)
        stages.append(dict(spent))
        labels.append(result.labels)
    np.savez_compressed(args.labels, labels=np.stack(labels))
    Path(args.result).write_text(json.dumps({
        "mevos_file": mevos.__file__, "threads": torch.get_num_threads(), "objects": len(tracker.object_ids),
        "grid": list(tracker.geometry.grid), "per_frame_s": per_frame, "stages_s": stages,
    }))
    return 0


# --------------------------------------------------------------------------------------------
# Driver


def run_worker(tree: Path, cfg: dict, threads: int, frames: int, sequence: str, tmp: Path, tag: str) -> dict:
    result, labels = tmp / f"{tag}.json", tmp / f"{tag}.npz"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--frames",
           str(frames), "--sequence", sequence, "--objects", str(cfg["objects"]), "--result", str(result),
           "--labels", str(labels), "--short-side", str(cfg["short_side"]), "--radius", str(cfg["radius"])]
    env = dict(os.environ, PYTHONPATH=str(tree))
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=str(tree))
    doc = json.loads(result.read_text())
    doc["process_s"] = time.perf_counter() - t
    doc["labels_path"] = labels
    return doc


def segment_cli(tree: Path, threads: int | None, sequence: str, out: Path, flags: list[str] = ()) -> dict:
    """The real `mevos segment` on the whole sequence (default settings plus `flags`, no overlay video): wall
    time of the command and its own FPS line. threads None: the tree's own default (before issue 12:
    torch's; after: the rule); else OMP_NUM_THREADS for the old tree, --threads for the new one."""
    import re

    cmd = [sys.executable, "-m", "mevos", "segment", str(DAVIS / "JPEGImages" / "480p" / sequence), "--mask",
           str(DAVIS / "Annotations" / "480p" / sequence / "00000.png"), "--out", str(out), "--force", "--overlay", "none", *flags]
    env = dict(os.environ, PYTHONPATH=str(tree))
    if threads is not None:
        if tree == REPO:
            cmd += ["--threads", str(threads)]
        else:
            env["OMP_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=str(tree), check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    fps = re.search(r"([0-9.]+) FPS", done.stdout)
    return {"command": shlex.join(cmd[1:]), "env_threads": threads, "wall_s": wall,
            "fps_printed": float(fps.group(1)) if fps else None}


def same_pngs(a: Path, b: Path) -> float:
    import numpy as np
    from PIL import Image

    pa, pb = sorted(a.glob("*.png")), sorted(b.glob("*.png"))
    assert [p.name for p in pa] == [p.name for p in pb] and pa, (a, b)
    same = sum(int((np.asarray(Image.open(x)) == np.asarray(Image.open(y))).sum()) for x, y in zip(pa, pb))
    return same / sum(np.asarray(Image.open(x)).size for x in pa)


def summarise(doc: dict, steady_from: int) -> dict:
    steady = doc["per_frame_s"][steady_from:]
    st = doc["stages_s"][steady_from:]
    stage_ms = {k: 1e3 * statistics.mean(s[k] for s in st) for k in STAGES}
    frame_ms = 1e3 * statistics.mean(steady)
    stage_ms["other"] = frame_ms - sum(stage_ms.values())
    return {"mevos": doc["mevos_file"], "threads": doc["threads"], "grid": doc["grid"], "objects": doc["objects"],
            "steady_frames": len(steady), "frame_ms_mean": frame_ms, "frame_ms_median": 1e3 * statistics.median(steady),
            "fps_steady": 1e3 / frame_ms, "fps_all_frames": len(doc["per_frame_s"]) / sum(doc["per_frame_s"]),
            "stage_ms": stage_ms}


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["results"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels, x = [], 0
    colours = {"encode_key": "C0", "affinity": "C3", "readout": "C2", "encode_value": "C1", "other": "C7"}
    for r in rows:
        for side in ("before", "after"):
            bottom = 0.0
            for k, c in colours.items():
                v = r[side]["stage_ms"][k]
                ax.bar(x, v, 0.8, bottom=bottom, color=c, label=k if x == 0 else None)
                bottom += max(v, 0.0)
            ax.text(x, bottom, f"{r[side]['fps_steady']:.1f} FPS", ha="center", va="bottom", fontsize=7)
            labels.append(f"{side}\n{r['size']}, {r['objects']} obj")
            x += 1
    ax.set_xticks(range(x), labels, fontsize=7)
    ax.set_ylabel("ms per frame (steady state, mean)")
    ax.set_title(f"mevos segment per frame, before (bf8564f) and after issue 12, {report['threads']} thread(s)\n"
                 f"{report['machine']['cpu_model']}, load {report['load_average_start']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _checkout(path: Path, rev: str) -> None:
    """A detached worktree of rev at path (made when missing); an error if path holds another commit."""
    full = subprocess.run(["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    if not (path / "mevos").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), full], cwd=REPO, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True).stdout.strip()
    if head != full:
        raise SystemExit(f"{path} is at {head[:12]}, not {rev}: point --before at a checkout of {rev}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--objects", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--short-side", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--radius", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--before", type=Path, default=Path("/tmp/mevos-bf8564f"),
                        help="a checkout of the code before issue 12 (made with git worktree when missing)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both trees (default: mevos.runtime.threads.default_threads() at start)")
    parser.add_argument("--frames", type=int, default=30, help="frames per run (the memory is full from frame 22)")
    parser.add_argument("--sequence", default="car-shadow", help="DAVIS-2016 sequence (default car-shadow)")
    parser.add_argument("--configs", default="240p:1,240p:4,320p:1,320p:4,480p:1,480p:4",
                        help="SIZE:OBJECTS list; sizes: " + ", ".join(f"{k} = {v[2]}" for k, v in CONFIGS.items()))
    parser.add_argument("--cli", action="store_true",
                        help="also run the real `mevos segment` on the whole sequence: before with the same threads "
                             "and with its default threads, after with its default")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    import numpy as np

    sys.path.insert(0, str(REPO))
    from mevos.bench.environment import load_average, machine_info, versions
    from mevos.runtime.threads import default_threads

    _checkout(args.before, "bf8564f")
    threads = args.threads or default_threads()
    load_start = load_average()
    steady_from = 22  # frame 0 given, frames 1..21 fill the 20-frame ring; from 22 on T = 21
    if args.frames <= steady_from:
        steady_from = args.frames // 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.configs.split(","):
            size, objects = spec.split(":")
            short_side, radius, settings = CONFIGS[size]
            cfg = {"objects": int(objects), "short_side": short_side, "radius": radius}
            row: dict = {"size": size, "objects": int(objects), "working_short_side": short_side, "radius": radius,
                         "settings": settings}
            docs = {}
            for side, tree in (("before", args.before), ("after", REPO)):
                docs[side] = run_worker(tree, cfg, threads, args.frames, args.sequence, Path(tmp), f"{spec}-{side}".replace(":", "_"))
                row[side] = summarise(docs[side], steady_from) | {"load_average_after": load_average()}
            a = np.load(docs["before"]["labels_path"])["labels"]
            b = np.load(docs["after"]["labels_path"])["labels"]
            row["same_label_pixels"] = float((a == b).mean())
            row["speedup_steady"] = row["before"]["frame_ms_mean"] / row["after"]["frame_ms_mean"]
            results.append(row)
            print(f"{size} {objects} object(s): before {row['before']['fps_steady']:.2f} FPS, after "
                  f"{row['after']['fps_steady']:.2f} FPS = {row['speedup_steady']:.2f}x; same labels on "
                  f"{100 * row['same_label_pixels']:.3f}% of pixels; stages after (ms) "
                  + ", ".join(f"{k} {v:.0f}" for k, v in row["after"]["stage_ms"].items()), flush=True)
        cli = {}
        if args.cli:
            # The old tree runs with today's defaults spelled out (same label maps); after: no flags.
            runs = {"before_same_threads": (args.before, threads, DEFAULT_FLAGS), "after_default": (REPO, None, []),
                    "before_default_threads": (args.before, None, DEFAULT_FLAGS)}
            for name, (tree, n, flags) in runs.items():
                cli[name] = segment_cli(tree, n, args.sequence, Path(tmp) / f"cli-{name}", flags)
                cli[name]["load_average_after"] = load_average()
                print(f"mevos segment {name}: {cli[name]['wall_s']:.1f} s, {cli[name]['fps_printed']} FPS", flush=True)
            cli["same_label_pixels_before_after"] = same_pngs(Path(tmp) / "cli-before_same_threads",
                                                              Path(tmp) / "cli-after_default")
            cli["speedup_wall_same_threads"] = cli["before_same_threads"]["wall_s"] / cli["after_default"]["wall_s"]
            cli["speedup_wall_vs_before_defaults"] = cli["before_default_threads"]["wall_s"] / cli["after_default"]["wall_s"]
            print(f"mevos segment: {cli['speedup_wall_same_threads']:.2f}x at the same threads, "
                  f"{cli['speedup_wall_vs_before_defaults']:.2f}x against the old default threads; same labels on "
                  f"{100 * cli['same_label_pixels_before_after']:.3f}% of pixels", flush=True)
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {
        "benchmark": "cpu_endtoend",
        "command": "python benchmarks/cpu_endtoend.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "device": "cpu", "threads": threads,
        "load_average_start": load_start, "load_average_end": load_average(), "versions": versions(),
        "before": {"tree": str(args.before), "commit": "bf8564f"}, "after": {"commit": git},
        "sequence": args.sequence, "frames": args.frames, "steady_from_frame": steady_from,
        "timed": "Tracker.step per frame (the loop of mevos segment; JPEG decoding and PNG writing excluded)",
        "results": results,
        "segment_cli": cli or None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cpu_endtoend.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}" + (" and .png" if plot(report, path.with_suffix(".png")) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
