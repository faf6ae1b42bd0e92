"""Training throughput before/after (not a test): clips per second of `mevos train` steps, and the
loss of the same steps, for the correspondence phase and the joint phase of a training preset.

"before" is the code at a git revision (checked out once as a worktree, default /tmp/mevos-before);
"after" is this working tree. Each measurement runs in its own process with PYTHONPATH on the tree
it measures, and the two alternate (before, after, after, before, ...) so that load from other jobs
on the machine falls on both alike. A measurement builds a fresh Trainer (same seed, so the same
initial weights), runs `--warmup` steps untimed and `--steps` steps timed through Trainer.train_step
in Trainer.run's order (batch b of epoch e, then b + 1, then batch 0 of e + 1; batches are seeded by
(seed, epoch, batch): both trees see the same clips), then scores the
weights it reached in float32 on `--eval-batches` fixed batches (no gradient). The joint phase
first clusters the pseudo masks with the fresh model (float32 in both trees: same masks, checked by
a hash) and trains at the joint learning rate.

  nice -n 10 .venv/bin/python benchmarks/train_throughput.py --data ../shared/data/unlabeled/davis2016-train
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ one measurement


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _tensor_sha1(*tensors: Any) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def measure(phase: str, preset_name: str, data: str, steps: int, warmup: int, eval_batches: int,
            threads: int, eval_labels: str = "", overrides: list[str] | None = None) -> dict[str, Any]:
    """Train `warmup + steps` steps of `phase` ('corr' or 'joint') from a fresh model with the code
    on sys.path -> timings, per-step losses and the float32 loss of the weights reached."""
    import inspect

    import torch

    import mevos
    from mevos.train.config import PRESETS
    from mevos.train.objective import Objective
    from mevos.train.trainer import RunOptions, Trainer

    torch.set_num_threads(threads)
    cfg = PRESETS[preset_name]
    if overrides:
        from mevos.train.config import parse_override

        cfg = cfg.with_overrides(dict(parse_override(o) for o in overrides))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, [data], RunOptions(out=Path(out), progress=False))
    epoch = 0 if phase == "corr" else cfg.corr_epochs
    with_seg = phase == "joint" and cfg.w_seg > 0
    result: dict[str, Any] = {"mevos": str(Path(mevos.__file__).parent), "phase": phase, "epoch": epoch,
                              "precision": getattr(cfg, "precision", "fp32 (no precision setting)")}
    if with_seg:
        t0 = time.perf_counter()
        trainer.recluster(epoch)
        result["cluster_seconds"] = round(time.perf_counter() - t0, 2)
        h = hashlib.sha1()
        for k in sorted(trainer.state.labels):
            h.update(trainer.state.labels[k].numpy().tobytes())
        result["labels_sha1"] = h.hexdigest()
    own_labels = dict(trainer.state.labels)
    for g in trainer.optimizer.param_groups:
        g["lr"] = trainer.lr_at(epoch)
    seconds, cpu, losses = [], [], []
    result["train_crop"] = int(trainer.make_batch(epoch, 0, with_seg)[0].shape[-1])
    # Steps in Trainer.run's order: batches 0..steps_per_epoch-1 of an epoch, then of the next (a
    # trainer never asks for a batch past its epoch's end; its prefetch follows this order).
    per_epoch = trainer.steps_per_epoch
    for i in range(warmup + steps):
        e, b = epoch + i // per_epoch, i % per_epoch
        if b == 0 and e != epoch:
            for g in trainer.optimizer.param_groups:
                g["lr"] = trainer.lr_at(e)
        _sync()
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(trainer.train_step(e, b, with_seg))
        _sync()
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    timed = seconds[warmup:]
    result.update({
        "steps": steps, "warmup": warmup, "batch_size": cfg.batch_size, "threads": torch.get_num_threads(),
        "seconds": round(sum(timed), 3), "seconds_per_step_median": round(statistics.median(timed), 4),
        "samples_per_s": steps * cfg.batch_size / sum(timed),
        # CPU time of the process: what the steps cost, less sensitive to other jobs than the wall clock
        "cpu_seconds": round(sum(cpu[warmup:]), 3), "samples_per_cpu_s": steps * cfg.batch_size / sum(cpu[warmup:]),
        "loss_total_per_step": [round(x["total"], 5) for x in losses],
        "loss_mean": {k: statistics.fmean(x[k] for x in losses[warmup:]) for k in losses[-1]},
    })
    # The weights reached, scored in float32 by both trees alike (the "after" tree may train in
    # bf16; its own training losses are bf16 arithmetic).
    eval_cfg = cfg.with_overrides({"precision": "fp32"}) if hasattr(cfg, "precision") else cfg
    scorer = Objective(trainer.model, eval_cfg)
    if with_seg and eval_labels:
        # The same pseudo masks for both trees' evaluations: the first joint measurement's clustering
        # (the trees' float32 clusterings of the same fresh weights can differ in a few pixels).
        if Path(eval_labels).is_file():
            trainer.state.labels = torch.load(eval_labels, weights_only=True)
        else:
            torch.save(own_labels, eval_labels)
            trainer.state.labels = own_labels
    # Fixed evaluation batches at the preset's crop_size in both trees (an epoch past the schedule;
    # a tree whose make_batch takes `crop` is told crop_size explicitly).
    crop_kw = {"crop": cfg.crop_size} if "crop" in inspect.signature(trainer.make_batch).parameters else {}
    totals, digests = [], []
    with torch.no_grad():
        for b in range(eval_batches):
            frames, phis, phil, seg = trainer.make_batch(cfg.epochs + 1000, b, with_seg, **crop_kw)
            digests.append(_tensor_sha1(frames, *((seg.masks, seg.query, seg.refs, seg.valid) if seg else ())))
            totals.append({k: float(v) for k, v in scorer(frames, phis, phil, seg).items()})
    result["eval_fp32"] = {k: statistics.fmean(x[k] for x in totals) for k in totals[0]}
    result["eval_crop"] = int(frames.shape[-1])
    result["eval_batches_sha1"] = hashlib.sha1("".join(digests).encode()).hexdigest()
    return result


# ------------------------------------------------------------------------------ the comparison


def _child(tree: Path, args: argparse.Namespace, phase: str, eval_labels: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--preset", args.preset,
           "--data", str(Path(args.data).resolve()), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--eval-batches", str(args.eval_batches), "--threads", str(args.threads), "--eval-labels", eval_labels]
    if tree == REPO:
        cmd += [f"--set={o}" for o in args.set]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement in {tree} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(res["mevos"]).resolve() != (tree / "mevos").resolve():
        raise RuntimeError(f"the measurement of {tree} imported mevos from {res['mevos']}")
    return res


def _worktree(path: Path, rev: str) -> str:
    """A detached checkout of rev at path (created once); returns the full commit hash."""
    full = subprocess.run(["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    if not (path / "mevos").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), full], cwd=REPO, check=True,
                       capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True).stdout.strip()
    if head != full:
        raise RuntimeError(f"{path} is at {head}, not {rev} ({full})")
    return full


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    sps = [r["samples_per_s"] for r in runs]
    first = runs[0]
    return {
        "samples_per_s": round(statistics.fmean(sps), 3), "samples_per_s_runs": [round(x, 3) for x in sps],
        "samples_per_cpu_s": round(statistics.fmean(r["samples_per_cpu_s"] for r in runs), 3),
        "seconds_per_step_median": [r["seconds_per_step_median"] for r in runs],
        "loss_mean": {k: round(v, 5) for k, v in first["loss_mean"].items()},
        "loss_mean_runs_identical": all(r["loss_mean"] == first["loss_mean"] for r in runs),
        "loss_total_per_step": first["loss_total_per_step"],
        "eval_fp32": {k: round(v, 5) for k, v in first["eval_fp32"].items()},
        "eval_fp32_runs_identical": all(r["eval_fp32"] == first["eval_fp32"] for r in runs),
        "train_crop": first["train_crop"], "eval_crop": first["eval_crop"],
        "eval_batches_sha1": sorted({r["eval_batches_sha1"] for r in runs}),
        "precision": first["precision"],
        **({"labels_sha1": first["labels_sha1"], "cluster_seconds": [r["cluster_seconds"] for r in runs]}
           if "labels_sha1" in first else {}),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/unlabeled/davis2016-train")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--before", default="6d75fce", help="git revision measured as 'before'")
    p.add_argument("--before-tree", default="/tmp/mevos-before", help="its worktree (created when missing)")
    p.add_argument("--phases", default="corr,joint")
    p.add_argument("--rounds", type=int, default=2, help="measurements of each tree per phase (alternating)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--eval-batches", type=int, default=4, help="fixed batches the reached weights are scored on")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared: keep it low)")
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    p.add_argument("--plot", default="benchmarks/results/train_throughput.png", help="bar chart ('' for none)")
    p.add_argument("--eval-labels", default="", help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="training setting of the 'after' tree only (repeatable), e.g. corr_crop_size=192")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.preset, args.data, args.steps, args.warmup, args.eval_batches,
                                 args.threads, args.eval_labels, args.set)))
        return 0

    import torch

    from mevos.bench.environment import device_info, load_average, machine_info, versions

    torch.set_num_threads(args.threads)
    machine = machine_info()
    before_tree = Path(args.before_tree)
    before_commit = _worktree(before_tree, args.before)
    trees = {"before": before_tree, "after": REPO}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {v: {} for v in trees}
    t_start = time.time()
    labels_dir = tempfile.TemporaryDirectory()
    eval_labels = str(Path(labels_dir.name) / "eval_labels.pt")
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for phase in args.phases.split(","):
            for variant in order:
                res = _child(trees[variant], args, phase, eval_labels)
                runs[variant].setdefault(phase, []).append(res)
                print(f"round {r + 1} {phase} {variant}: {res['samples_per_s']:.3f} clips/s "
                      f"({res['samples_per_cpu_s']:.3f} per CPU second), "
                      f"loss {res['loss_mean']['total']:.4f}, fp32 eval {res['eval_fp32']['total']:.4f}",
                      file=sys.stderr)
    machine["load_average_end"] = load_average()
    phases: dict[str, Any] = {}
    for phase in args.phases.split(","):
        b, a = _summary(runs["before"][phase]), _summary(runs["after"][phase])
        phases[phase] = {
            "before": b, "after": a,
            "speedup": round(a["samples_per_s"] / b["samples_per_s"], 2),
            "speedup_cpu_time": round(a["samples_per_cpu_s"] / b["samples_per_cpu_s"], 2),
            "speedup_per_round": [round(x["samples_per_s"] / y["samples_per_s"], 2)
                                  for x, y in zip(runs["after"][phase], runs["before"][phase])],
            "loss_mean_change": round(a["loss_mean"]["total"] - b["loss_mean"]["total"], 5),
            "eval_fp32_change": round(a["eval_fp32"]["total"] - b["eval_fp32"]["total"], 5),
            "eval_fp32_change_per_term": {k: round(a["eval_fp32"][k] - b["eval_fp32"][k], 5) for k in a["eval_fp32"]},
            "eval_batches_identical": a["eval_batches_sha1"] == b["eval_batches_sha1"] and len(a["eval_batches_sha1"]) == 1,
            "after_not_worse": a["eval_fp32"]["total"] <= b["eval_fp32"]["total"],
        }
    report = {
        "schema": "mevos.bench.train_throughput/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "command": sys.argv,
        "wall_seconds": round(time.time() - t_start, 1),
        "machine": machine,
        "device": device_info(torch.device("cpu")),
        "versions": versions(),
        "settings": {"preset": args.preset, "after_overrides": args.set, "data": args.data, "steps": args.steps, "warmup": args.warmup,
                     "rounds": args.rounds, "eval_batches": args.eval_batches, "threads": args.threads,
                     "before": {"revision": args.before, "commit": before_commit, "tree": str(before_tree)},
                     "after": {"tree": str(REPO), "commit": subprocess.run(
                         ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
                         "working_tree_changes": bool(subprocess.run(
                             ["git", "status", "--porcelain", "mevos"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip())}},
        "notes": ("samples = clips (3 frames each) per second of Trainer.train_step (batch assembly, forward, "
                  "backward, Adam), mean over rounds; losses: mean of the timed steps' training losses (each tree's "
                  "own arithmetic, at its own training crop: not comparable when train_crop differs) and eval_fp32: "
                  "the weights reached after warmup + steps steps scored in float32 on the same fixed batches at "
                  "eval_crop (identical inputs and pseudo masks in both trees: eval_batches_sha1) - the fair "
                  "same-loss-per-step check when the training crop changes. Both trees start from the same "
                  "seeded weights and see the same seeded clips (the after tree may crop them smaller: train_crop)."),
        "phases": phases,
    }
    from mevos.atomic import write_text_atomic

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=1) + "\n")
    for phase, r in phases.items():
        print(f"{phase}: before {r['before']['samples_per_s']:.3f} clips/s, after {r['after']['samples_per_s']:.3f} "
              f"clips/s, x{r['speedup']}; loss {r['before']['loss_mean']['total']:.4f} -> "
              f"{r['after']['loss_mean']['total']:.4f}, fp32 eval {r['before']['eval_fp32']['total']:.4f} -> "
              f"{r['after']['eval_fp32']['total']:.4f}")
    print(f"wrote {out}")
    if args.plot:
        _plot(phases, Path(args.plot), args)
        print(f"wrote {args.plot}")
    return 0


def _plot(phases: dict[str, Any], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(phases)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    xs = range(len(names))
    for off, variant, colour in ((-0.2, "before", "#999999"), (0.2, "after", "#2b7bba")):
        vals = [phases[n][variant]["samples_per_s"] for n in names]
        bars = ax.bar([x + off for x in xs], vals, 0.4, color=colour,
                      label=f"{variant} ({args.before})" if variant == "before" else "after (this tree)")
        for bar, n in zip(bars, names):
            crop = phases[n][variant]["train_crop"]
            ax.annotate(f"{bar.get_height():.2f}\ncrop {crop}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{n}\nx{phases[n]['speedup']}, fp32 eval {phases[n]['eval_fp32_change']:+.4f}"
                             for n in names], fontsize=8)
    ax.set_ylabel("clips / s (train_step)")
    ax.set_title(f"mevos train --preset {args.preset}: {args.threads} thread(s), 2-core CPU", fontsize=9)
    ax.margins(y=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
