"""Unlabeled video for training: discovery, frame reading that survives bad files, clip sampling.

A video is a folder of frames (any folder holding images, at any depth under the roots) or a video
file (decoded once into memory at a bounded size). A frame that cannot be read is skipped with a
warning and counted: the clip takes the nearest readable frame instead, so an epoch never stops
on one bad file. Videos shorter than a clip are left out with a warning.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mevos.data.video import IMAGE_EXTENSIONS, VideoFileSource, list_images, read_image
from mevos.errors import InputError
from mevos.train.transforms import Transform, apply_batch, sample_clip_transform, sample_phi

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})


class Video:
    """One training video: `num_frames`, `size` (H, W), `name`, and `frame(i)` -> H x W x 3 uint8."""

    def __init__(self, name: str, paths: list[Path] | None = None, frames: list[np.ndarray] | None = None) -> None:
        self.name = name
        self.paths = paths
        self.frames = frames
        self.num_frames = len(paths) if paths is not None else len(frames or [])
        self.bad: set[int] = set()
        self.size: tuple[int, int] = (0, 0)

    def read(self, i: int) -> np.ndarray:
        """Frame i, raising InputError when it cannot be read."""
        if self.frames is not None:
            return self.frames[i]
        assert self.paths is not None
        return read_image(self.paths[i])


class VideoSet:
    """The videos found under `roots`. `stats` counts skipped videos and unreadable frames."""

    def __init__(self, roots: Sequence[str | os.PathLike[str]], min_frames: int, max_short_side: int = 320,
                 exclude: Sequence[str | os.PathLike[str]] = ()) -> None:
        """exclude: folders of evaluation video (e.g. DAVIS val); a training video holding any frame
        byte-identical to one of theirs is left out with a warning, so evaluation frames never train."""
        self.videos: list[Video] = []
        self.skipped_short: list[str] = []
        self.excluded: list[str] = []
        self.bad_frames = 0
        found: list[Video] = []
        for root in roots:
            found.extend(_discover(Path(root), max_short_side))
        if exclude:
            banned = _frame_digests(exclude)
            kept = []
            for v in found:
                if v.paths is not None and any(_digest(p) in banned for p in v.paths):
                    warnings.warn(f"skipping video {v.name}: it holds frames of the excluded evaluation video",
                                  stacklevel=2)
                    self.excluded.append(v.name)
                else:
                    kept.append(v)
            found = kept
        if not found:
            where = ", ".join(str(r) for r in roots)
            raise InputError(
                f"no training video under {where}: expected folders of frames "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or video files ({', '.join(sorted(VIDEO_EXTENSIONS))})"
            )
        for v in found:
            if v.num_frames < min_frames:
                warnings.warn(f"skipping video {v.name}: {v.num_frames} frames, a clip needs {min_frames}",
                              stacklevel=2)
                self.skipped_short.append(v.name)
                continue
            v.size = self._first_size(v)
            if v.size != (0, 0):
                self.videos.append(v)
        if not self.videos:
            raise InputError(
                f"every video found is shorter than a training clip ({min_frames} frames) or unreadable: "
                f"{', '.join(v.name for v in found)}"
            )

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def num_frames(self) -> int:
        return sum(v.num_frames for v in self.videos)

    def _first_size(self, v: Video) -> tuple[int, int]:
        for i in range(v.num_frames):
            frame = self.frame(v, i)
            if frame is not None:
                return frame.shape[0], frame.shape[1]
        warnings.warn(f"skipping video {v.name}: no readable frame", stacklevel=2)
        return (0, 0)

    def frame(self, v: Video, i: int) -> np.ndarray | None:
        """Frame i of v, or None (with a warning, counted once per frame) when it is unreadable
        or has another size than the video's first frame."""
        if i in v.bad:
            return None
        try:
            frame = v.read(i)
            if v.size != (0, 0) and frame.shape[:2] != v.size:
                raise InputError(f"frame {i} is {frame.shape[1]}x{frame.shape[0]}, the video is {v.size[1]}x{v.size[0]}")
        except InputError as exc:
            v.bad.add(i)
            self.bad_frames += 1
            warnings.warn(f"skipping unreadable frame {i} of {v.name}: {exc}", stacklevel=2)
            return None
        return frame

    def readable_frame(self, v: Video, i: int) -> tuple[int, np.ndarray]:
        """The readable frame nearest to i (i itself when it reads); InputError when none does."""
        for d in range(v.num_frames):
            for j in (i - d, i + d) if d else (i,):
                if 0 <= j < v.num_frames:
                    frame = self.frame(v, j)
                    if frame is not None:
                        return j, frame
        raise InputError(f"video {v.name} has no readable frame left")


def _digest(path: Path) -> bytes:
    return hashlib.sha1(path.read_bytes()).digest()


def _frame_digests(folders: Sequence[str | os.PathLike[str]]) -> set[bytes]:
    """SHA-1 of every image file under the folders (recursively)."""
    out: set[bytes] = set()
    for folder in folders:
        if not Path(folder).exists():
            raise InputError(f"{folder}: excluded evaluation folder does not exist")
        for dirpath, _, _ in os.walk(folder):
            out.update(_digest(p) for p in list_images(Path(dirpath)))
    return out


def _discover(root: Path, max_short_side: int) -> list[Video]:
    if not root.exists():
        raise InputError(f"{root}: training data folder or file does not exist")
    if root.is_file():
        return [_load_video_file(root, max_short_side)] if root.suffix.lower() in VIDEO_EXTENSIONS else []
    videos: list[Video] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Annotations/ folders (DAVIS layout) hold label maps, not frames.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "Annotations")
        d = Path(dirpath)
        images = list_images(d)
        if images:
            videos.append(Video(str(d.relative_to(root)) if d != root else d.name, paths=images))
        for f in sorted(filenames):
            if Path(f).suffix.lower() in VIDEO_EXTENSIONS and not f.startswith("."):
                try:
                    videos.append(_load_video_file(d / f, max_short_side))
                except InputError as exc:
                    warnings.warn(f"skipping video file {d / f}: {exc}", stacklevel=2)
    return videos


def _load_video_file(path: Path, max_short_side: int) -> Video:
    """Decode a whole video file once (random access into compressed video is slow), downscaled so
    its short side is at most max_short_side. A decode error ends the video at the last good frame."""
    frames: list[np.ndarray] = []
    try:
        for frame in VideoFileSource(path):
            frames.append(_shrink(frame, max_short_side))
    except InputError as exc:
        if not frames:
            raise
        warnings.warn(f"{path}: decoding stopped after {len(frames)} frames ({exc})", stacklevel=2)
    return Video(path.stem, frames=frames)


def _shrink(frame: np.ndarray, max_short_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if min(h, w) <= max_short_side:
        return frame
    from PIL import Image

    s = max_short_side / min(h, w)
    return np.asarray(Image.fromarray(frame).resize((round(w * s), round(h * s)), Image.BILINEAR))


# ---------------------------------------------------------------------------------- clips


@dataclass
class ClipBatch:
    """A batch of B clips, each of frames (t, t+1, t') with |t' - t| >= long_gap, augmented.

    frames: B x 3 x 3 x S x S float in [0, 1] (order t, t+1, t'); phi_short, phi_long: one Phi per
    clip for L_short (on frame t) and L_long (on frame t'); video: index of each clip's video;
    index: B x 3 frame indices; clip: each clip's augmentation (frame -> crop)."""

    frames: Tensor
    phi_short: list[Transform]
    phi_long: list[Transform]
    video: list[int]
    index: list[list[int]]
    clip: list[Transform]


def to_tensor(frame: np.ndarray) -> Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W float in [0, 1]."""
    return torch.tensor(frame, dtype=torch.uint8).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def sample_clip(data: VideoSet, vi: int, rng: np.random.Generator, crop: int, scale_min: int, scale_max: int,
                flip: bool, long_gap: int, long_max_gap: int, phi_scale_min: float, phi_flip: bool
                ) -> tuple[Tensor, list[int], Transform, Transform, Transform]:
    """One clip of video vi: (frames 3 x 3 x S x S, indices, clip transform, phi_short, phi_long)."""
    v = data.videos[vi]
    n = v.num_frames
    t = int(rng.integers(0, n - long_gap))  # leaves room for t + long_gap
    hi = n - 1 if long_max_gap == 0 else min(n - 1, t + long_max_gap)
    lo_far = t + long_gap
    choices = list(range(lo_far, hi + 1)) + [s for s in range(0, t - long_gap + 1)
                                             if long_max_gap == 0 or t - s <= long_max_gap]
    t_far = int(choices[int(rng.integers(0, len(choices)))])
    wanted = [t, min(t + 1, n - 1), t_far]
    clip = sample_clip_transform(rng, v.size, crop, scale_min, scale_max, flip)
    phi_s, phi_l = sample_phi(rng, phi_scale_min, phi_flip), sample_phi(rng, phi_scale_min, phi_flip)
    images, index = [], []
    for i in wanted:
        j, frame = data.readable_frame(v, i)
        index.append(j)
        images.append(to_tensor(frame))
    x = torch.cat(images)
    frames = apply_batch(x, [clip] * 3, (crop, crop))
    return frames.clamp_(0, 1), index, clip, phi_s, phi_l


def crop_labels(labels: Tensor, clip: Transform, size: int) -> Tensor:
    """Pseudo labels of some frames of a video (F x h x w uint8, at any resolution covering the
    whole frame) -> F x size x size int64, through the clip's transformation (nearest)."""
    x = labels.unsqueeze(1).float()
    return apply_batch(x, [clip] * x.shape[0], (size, size), mode="nearest")[:, 0].round().long()


def resize_for_clustering(frame: np.ndarray, short_side: int) -> Tensor:
    """frame H x W x 3 uint8 -> 1 x 3 x H' x W' float, short side ~short_side, sides multiples of 8."""
    h, w = frame.shape[:2]
    s = short_side / min(h, w)
    hh, ww = max(8, round(h * s / 8) * 8), max(8, round(w * s / 8) * 8)
    return F.interpolate(to_tensor(frame), size=(hh, ww), mode="bilinear", align_corners=False, antialias=True)
