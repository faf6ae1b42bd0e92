"""Writing a run's results: one palette PNG per frame and an overlay video, all or nothing.

Everything goes into a temporary folder beside the output folder, which is renamed into place only
when the run completes, so an interrupted or failed run never leaves a folder that looks complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType

import numpy as np

from mevos.data.overlay import overlay
from mevos.data.palette import read_label_png, write_label_png
from mevos.data.video import FrameSource, ImageFolderSource, VideoWriter
from mevos.errors import InputError


def prepare_output(out: Path, force: bool) -> Path:
    """Check OUT can be written and return the (new, empty) temporary folder beside it."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"{out} exists and is not empty; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def finish_output(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder into place (replacing OUT)."""
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)


def read_first_mask(path: str | Path, source: FrameSource) -> np.ndarray:
    """The first frame's label map (H x W uint8), checked against the source's frame size."""
    mask = read_label_png(path)
    if mask.shape != source.size:
        raise InputError(
            f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from the frame size "
            f"{source.size[1]}x{source.size[0]} of {source.name}"
        )
    if not mask.any():
        raise InputError(f"{path}: the mask has no object (every pixel is 0 = background)")
    return mask


class ResultWriter:
    """Masks named like the source's frames (00000.png, ... for video files) and an overlay video:
    `overlay` None = OUT/overlay.mp4, "none" = no overlay, else its path (the CLIs' --overlay).
    Use as a context manager: leaving the block normally moves everything into place, an
    exception removes it all."""

    def __init__(self, out: str | Path, source: FrameSource, *, force: bool = False,
                 overlay: str | None = None) -> None:
        self.out = Path(out)
        self.tmp = prepare_output(self.out, force)
        self.names = [p.stem for p in source.paths] if isinstance(source, ImageFolderSource) else None
        self.overlay_path = None if overlay == "none" else Path(overlay) if overlay else self.out / "overlay.mp4"
        self.video = VideoWriter(self.tmp / "overlay.mp4", fps=source.fps or 24.0) if self.overlay_path else None
        self.count = 0

    def write(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
        """Frame `index`'s label map (H x W uint8) and, for the overlay, the frame (H x W x 3)."""
        name = self.names[index] if self.names else f"{index:05d}"
        write_label_png(self.tmp / f"{name}.png", labels)
        if self.video is not None:
            self.video.write(overlay(frame, labels))
        self.count += 1

    def close(self) -> None:
        """Finish the overlay and move the results into place."""
        if self.video is not None:
            self.video.close()
        finish_output(self.tmp, self.out)
        if self.overlay_path is not None and self.overlay_path != self.out / "overlay.mp4":
            self.overlay_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.out / "overlay.mp4"), self.overlay_path)

    def abort(self) -> None:
        """Drop everything written so far."""
        if self.video is not None:
            self.video.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
