"""Self-supervised training on unlabeled video (paper sections 3.1-3.3).

Phase 1 trains the encoder with the correspondence losses only; phase 2 adds mask-embedding
learning on pseudo masks from space-time clustering, re-clustered every few epochs. Writes
OUT/last.pt (resumable, every --checkpoint-every steps and each epoch), OUT/corr_final.pt (end of
phase 1), OUT/final.pt (weights only) and OUT/log.jsonl (loss terms, learning rate, clustering).

examples:
  mevos train ../shared/data/unlabeled --preset cpu --out runs/small
  mevos train ../shared/data/unlabeled --preset cpu --out runs/small --resume runs/small/last.pt
  torchrun --nproc_per_node 2 -m mevos train DATA --preset paper --out runs/r18
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mevos.train.config import PRESETS

    parser.add_argument("data", nargs="+", help="folders of frame folders and/or video files (searched recursively)")
    parser.add_argument("--out", required=True, help="run folder for checkpoints and the log")
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS),
                        help="training preset (default: cpu; 'paper' is section 3.3 as written)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override one setting of the preset, e.g. --set crop_size=192 (repeatable)")
    parser.add_argument("--resume", default=None,
                        help="checkpoint to continue from (OUT/last.pt; 'auto': OUT/last.pt when it exists)")
    parser.add_argument("--init", default=None, help="start from the weights of this checkpoint (fresh schedule)")
    parser.add_argument("--export", default=None, help="also write the final weights (no training state) here")
    parser.add_argument("--davis", default=None, help="DAVIS folder to evaluate J&F on (at the end, and every --eval-every epochs)")
    parser.add_argument("--exclude", action="append", default=[], metavar="DIR",
                        help="evaluation video that must never train: training videos holding any frame "
                             "byte-identical to one under DIR are skipped (repeatable; --davis is always excluded)")
    parser.add_argument("--eval-every", type=int, default=0, help="epochs between DAVIS evaluations (0: only at the end)")
    parser.add_argument("--eval-short-side", type=int, default=240, help="DAVIS frames are evaluated at this short side")
    parser.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    parser.add_argument("--snapshot-every", type=int, default=0,
                        help="steps between weights-only snapshots OUT/snapshots/step<N>.pt, e.g. for a "
                             "quality-against-compute curve (default 0: none)")
    parser.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (resumable)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per process (default: the usable cores less those other processes "
                             "keep busy, by the 1-minute load average, shared by the processes of a torchrun; at least 1)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--rank-weights", action="store_true",
                        help="every process also writes its final weights to OUT/rank<r>.pt (to check they agree)")


def run(args: argparse.Namespace) -> int:
    import torch

    from mevos.train.config import parse_override, train_preset
    from mevos.train.trainer import RunOptions, Trainer, init_distributed

    config = train_preset(args.preset).with_overrides(dict(parse_override(o) for o in args.overrides))
    out = Path(args.out)
    resume = args.resume
    if resume == "auto":
        resume = str(out / "last.pt") if (out / "last.pt").is_file() else None
    distributed = init_distributed()
    from mevos.runtime.threads import configure_threads

    world = torch.distributed.get_world_size() if distributed else 1
    threads = configure_threads(args.threads, processes=world)
    try:
        options = RunOptions(
            out=out, checkpoint_every=args.checkpoint_every, log_every=args.log_every, max_steps=args.max_steps,
            davis=Path(args.davis) if args.davis else None, eval_every=args.eval_every,
            eval_short_side=args.eval_short_side, progress=not args.no_progress,
            command="mevos train " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["train"]
            else "mevos train " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            export=Path(args.export) if args.export else None, threads=threads,
            rank_weights=args.rank_weights, exclude=tuple(Path(e) for e in args.exclude),
            snapshot_every=args.snapshot_every,
        )
        trainer = Trainer(config, args.data, options, resume=resume, init=args.init, device=args.device)
        if trainer.rank == 0:
            print(f"mevos train: {len(trainer.data)} videos, {trainer.data.num_frames} frames, "
                  f"{trainer.steps_per_epoch} steps/epoch x {config.epochs} epochs, {trainer.world} process(es), "
                  f"model {config.model}, crop {config.crop_size}" + (f", resumed at step {trainer.state.step}" if resume else "")
                  + (f"; excluded (evaluation frames): {', '.join(trainer.data.excluded)}" if trainer.data.excluded else ""),
                  file=sys.stderr)
        final = trainer.run()
        if trainer.rank == 0:
            done = final or out / "last.pt"
            print(f"mevos train: {trainer.state.step} steps in {trainer.state.elapsed:.0f} s -> {done}"
                  + (f" (bad frames skipped: {trainer.data.bad_frames})" if trainer.data.bad_frames else ""))
    finally:
        if distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
