"""J&F on the DAVIS-2016 dev sequences of several propagation variants (not a test).

Every variant runs through the runtime's Tracker (the shipped inference path) and is scored by the
official protocol at full resolution. Variants name a key source and tracker settings:

  small          the shipped checkpoint (mevos/assets/small.pt) or --checkpoint
  r18-random     an untrained, seeded full-width ResNet-18 (output stride 8), keys only (R = 0)
  xfeat          XFeat's dense descriptors (the `teacher` extra), keys only (R = 0)

  python benchmarks/quality_table.py --variant small:R=2 --variant small:R=0 --variant r18-random:R=0 \
      --out benchmarks/results/quality_inference.json

Settings after the colon: R (refine rounds), radius (None or cells), mem (mem_frames), short (short side).
The JSON is rewritten after each variant, so a long table can be interrupted and resumed (--resume).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mevos.atomic import write_text_atomic
from mevos.data.davis import DavisFolder
from mevos.eval.evaluate import GlobalScores, ObjectScores, baseline_sequence, evaluate_sequence
from mevos.model import build_model, preset
from mevos.model.config import ModelConfig
from mevos.runtime.backend import Backend, TorchBackend
from mevos.runtime.tracker import Tracker, TrackerConfig
from mevos.model.weights import load_default_model


class KeyOnlyBackend:
    """A backend whose keys come from any stride-8 feature network; no values, no decoder (R = 0)."""

    name = "keys-only"

    def __init__(self, net: torch.nn.Module, key_dim: int) -> None:
        self.net = net.eval()
        self.device = torch.device("cpu")
        self.config = replace(preset("small"), key_dim=key_dim, value_dim=1)

    @torch.inference_mode()
    def encode_key(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        key = self.net(image)
        return torch.nn.functional.normalize(key, dim=1), key[:, :1], key[:, :1]

    def encode_value(self, image: Tensor, masks: Tensor) -> Tensor:
        h, w = image.shape[-2] // 8, image.shape[-1] // 8
        return torch.zeros(masks.shape[0], 1, h, w)

    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        raise RuntimeError("a keys-only backend has no decoder: use refine_rounds=0")


class _R18Keys(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.key = build_model(preset("r18"), seed=0).key_encoder

    def forward(self, image: Tensor) -> Tensor:
        feat, _, _ = self.key.backbone(self.key.normalize(image))
        return feat


class _WithColour(torch.nn.Module):
    """Keys of another network, concatenated with the mean CIE Lab colour of each 8x8 cell."""

    def __init__(self, net: torch.nn.Module, weight: float, lightness: float = 1.0) -> None:
        super().__init__()
        self.net, self.weight, self.lightness = net, weight, lightness

    def forward(self, image: Tensor) -> Tensor:
        from mevos.model.colour import cell_colour

        colour = cell_colour(image, 8, 3, self.weight, self.lightness)
        return torch.cat([torch.nn.functional.normalize(self.net(image), dim=1), colour], dim=1)


def make_backend(source: str, checkpoint: str | None) -> Backend:
    if source == "small":
        model, _ = load_default_model(checkpoint)
        return TorchBackend(model, device="cpu", precision="fp32")
    if source == "r18-random":
        return KeyOnlyBackend(_R18Keys(), 512)
    if source == "xfeat":
        from mevos.train.teacher import XFeatTeacher

        return KeyOnlyBackend(XFeatTeacher(), 64)
    if source.startswith("xfeat+lab"):  # xfeat+lab@WEIGHT[/LIGHTNESS]
        from mevos.train.teacher import XFeatTeacher

        spec = source.split("@")[1] if "@" in source else "1"
        weight, _, light = spec.partition("/")
        return KeyOnlyBackend(_WithColour(XFeatTeacher(), float(weight), float(light or 1.0)), 67)
    raise SystemExit(f"unknown key source {source!r}")


def parse_variant(text: str, short_side: int) -> tuple[str, TrackerConfig]:
    source, _, opts = text.partition(":")
    cfg = TrackerConfig(short_side=short_side)
    names = {"R": "refine_rounds", "radius": "radius", "mem": "mem_frames", "short": "short_side", "k": "top_k",
             "masks": "memory_masks"}
    for item in filter(None, opts.split(",")):
        k, _, v = item.partition("=")
        val: int | str | None = None if v == "None" else v if k == "masks" else int(v)
        cfg = replace(cfg, **{names[k]: val})
    return source, cfg


def run_variant(backend: Backend, cfg: TrackerConfig, davis: DavisFolder, names: list[str]) -> dict[str, object]:
    objs: list[ObjectScores] = []
    base: list[ObjectScores] = []
    per_seq: dict[str, dict[str, float]] = {}
    for seq in names:
        frames = list(davis.frames(seq))
        gt = np.stack(list(davis.masks(seq)))[: len(frames)]
        first = np.where(gt[0] == 255, 0, gt[0]).astype(np.uint8)
        tracker = Tracker(backend, cfg)
        with torch.inference_mode():
            pred = np.stack([tracker.step(f, masks=first if i == 0 else None).labels
                             for i, f in enumerate(frames[: len(gt)])])
        scores = evaluate_sequence(gt, pred, name=seq)
        objs += scores
        base += baseline_sequence(gt, name=seq)
        g = GlobalScores.of(scores)
        j_last = float(((pred[-1] == 1) & (gt[-1] == 1)).sum() / max(1, ((pred[-1] == 1) | (gt[-1] == 1)).sum()))
        per_seq[seq] = {"JF": g.JF_mean, "J": g.J_mean, "F": g.F_mean, "J_last_frame": j_last,
                        "copy_first_mask_JF": GlobalScores.of(baseline_sequence(gt, name=seq)).JF_mean}
        print(f"  {seq:20s} J&F {g.JF_mean:.3f}", flush=True)
    g = GlobalScores.of(objs)
    return {"JF": g.JF_mean, "J": g.J_mean, "F": g.F_mean, "copy_first_mask_JF": GlobalScores.of(base).JF_mean,
            "per_sequence": per_seq}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", required=True, help="SOURCE[:R=..,radius=..,mem=..,short=..]")
    p.add_argument("--checkpoint", default=None, help="weights of the `small` source (default: shipped)")
    p.add_argument("--label", default=None, help="name of the checkpoint in the table (default: its path)")
    p.add_argument("--davis", default="../shared/data/davis2016")
    p.add_argument("--sequences", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--short-side", type=int, default=240)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="skip variants already in --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    davis = DavisFolder(args.davis)
    names = args.sequences.split(",") if args.sequences else list(davis.sequences)
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.is_file() else {"variants": {}}
    table.update({
        "what": "J&F (official DAVIS protocol) on DAVIS-2016 dev sequences through mevos's Tracker",
        "sequences": names, "machine": platform.node(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": args.threads,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    })
    for text in args.variant:
        source, cfg = parse_variant(text, args.short_side)
        key = text if source != "small" or not args.checkpoint else f"{args.label or args.checkpoint}|{text}"
        if args.resume and key in table["variants"]:
            continue
        print(f"{key}", flush=True)
        t0 = time.perf_counter()
        row = run_variant(make_backend(source, args.checkpoint), cfg, davis, names)
        row.update({"settings": {k: getattr(cfg, k) for k in ("top_k", "temperature", "mem_frames", "refine_rounds",
                                                              "radius", "short_side", "memory_masks")},
                    "seconds": round(time.perf_counter() - t0, 1),
                    "checkpoint": args.checkpoint if source == "small" else None})
        table["variants"][key] = row
        print(f"{key}: J&F {row['JF']:.4f} (copy {row['copy_first_mask_JF']:.4f}) in {row['seconds']} s", flush=True)
        write_text_atomic(out, json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
