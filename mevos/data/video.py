"""Frames in and out: image folders, video files (PyAV), single images, and an atomic mp4 writer.

Every frame is an RGB H x W x 3 uint8 numpy array. Sources stream: iterating decodes one frame at
a time, and each `iter()` starts again from the first frame.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image, UnidentifiedImageError

from mevos.atomic import temp_beside
from mevos.errors import InputError, UsageError

#: File name endings (lower case) that make a file in a frame folder count as a frame.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one image file as RGB: H x W x 3 uint8 (gray, palette and alpha images are converted)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: image file does not exist")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{p}: not a readable image ({type(exc).__name__}: {exc})") from exc


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    return h, w


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (hidden files skipped)."""
    return sorted(
        f for f in folder.iterdir()
        if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") and f.is_file()
    )


class FrameSource(ABC):
    """An iterable of RGB frames (H x W x 3 uint8) with what is known about them up front.

    name: the folder or file stem. num_frames: int, or None when a video does not say.
    fps: float, or None (image folders). size: (H, W) of the first frame; every later frame must match.
    """

    name: str
    num_frames: int | None
    fps: float | None
    size: tuple[int, int]

    @abstractmethod
    def __iter__(self) -> Iterator[np.ndarray]:
        """Decode from the first frame on, one H x W x 3 uint8 frame at a time."""

    def _check_size(self, frame: np.ndarray, where: str) -> np.ndarray:
        if frame.shape[:2] != self.size:
            raise InputError(
                f"{where}: frame size {frame.shape[1]}x{frame.shape[0]} differs from the first frame's "
                f"{self.size[1]}x{self.size[0]}; all frames of a sequence must have one size"
            )
        return frame


class ImageFolderSource(FrameSource):
    """Frames from the image files of one folder, in name order. `.paths` lists them."""

    def __init__(self, folder: Path) -> None:
        self.paths = list_images(folder)
        if not self.paths:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise InputError(f"{folder}: folder has no images ({exts})")
        self.name = folder.name
        self.num_frames = len(self.paths)
        self.fps = None
        self.size = image_size(self.paths[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        for p in self.paths:
            yield self._check_size(read_image(p), str(p))


class VideoFileSource(FrameSource):
    """Frames decoded from the first video stream of a file with PyAV (FFmpeg)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.stem
        container = self._open()
        try:
            stream = container.streams.video[0]
            self.num_frames = int(stream.frames) or None
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else None
            first = next(self._decode(container), None)
        finally:
            container.close()
        if first is None:
            raise InputError(f"{path}: video has no decodable frames")
        self.size = (first.shape[0], first.shape[1])

    def _open(self):  # noqa: ANN202 - av.container.InputContainer, av imported lazily
        import av

        try:
            container = av.open(str(self.path), mode="r")
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise InputError(f"{self.path}: not a readable video ({type(exc).__name__}: {exc})") from exc
        if not container.streams.video:
            container.close()
            raise InputError(f"{self.path}: file has no video stream")
        return container

    def _decode(self, container) -> Iterator[np.ndarray]:  # noqa: ANN001
        import av

        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = container.decode(stream)
        index = 0
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except (av.FFmpegError, OSError, ValueError) as exc:
                raise InputError(
                    f"{self.path}: cannot decode frame {index} ({type(exc).__name__}: {exc})"
                ) from exc
            yield frame.to_ndarray(format="rgb24")
            index += 1

    def __iter__(self) -> Iterator[np.ndarray]:
        container = self._open()
        try:
            for i, frame in enumerate(self._decode(container)):
                yield self._check_size(frame, f"{self.path} frame {i}")
        finally:
            container.close()


def open_frames(source: str | os.PathLike[str]) -> FrameSource:
    """Open a folder of images (sorted by name) or a video file as a lazy FrameSource.

    Checks up front that the source exists and that its first frame can be read; later frames are
    checked as they are read (unreadable file, size change -> InputError naming the file).
    """
    p = Path(source)
    if not p.exists():
        raise InputError(f"{p}: frame folder or video file does not exist")
    if p.is_dir():
        return ImageFolderSource(p)
    return VideoFileSource(p)


class VideoWriter:
    """Write RGB frames (H x W x 3 uint8) to an mp4 (H.264 via libx264, else MPEG-4 part 2), yuv420p.

    Frames go to a hidden temporary file beside `path`, renamed onto `path` only when the writer
    closes without an exception, so an interrupted run never leaves a file that looks complete.
    yuv420p needs even sizes: odd heights/widths are padded by repeating the last row/column.
    The first frame fixes the size. Use as a context manager, or call close() / abort().
    """

    CODECS: tuple[str, ...] = ("libx264", "mpeg4")

    def __init__(self, path: str | os.PathLike[str], fps: float = 24.0, quality: int = 20) -> None:
        """quality: libx264 CRF (0 = lossless .. 51 = worst; 18-23 is visually good)."""
        if not fps > 0:
            raise UsageError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise InputError(f"{self.path}: folder {self.path.parent} does not exist")
        self.fps = float(fps)
        self.quality = int(quality)
        self.num_frames = 0
        self.codec: str | None = None
        self._size: tuple[int, int] | None = None
        self._container = None
        self._stream = None
        self._tmp: Path | None = temp_beside(self.path)

    def _start(self, height: int, width: int) -> None:
        import av

        self._size = (height, width)
        h2, w2 = height + height % 2, width + width % 2
        rate = Fraction(self.fps).limit_denominator(1001)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        errors = []
        for codec in self.CODECS:
            try:
                stream = self._container.add_stream(codec, rate=rate)
            except (av.FFmpegError, ValueError) as exc:
                errors.append(f"{codec}: {exc}")
                continue
            stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(self.quality), "preset": "medium"}
            else:
                stream.bit_rate = int(max(1_000_000, w2 * h2 * self.fps * 0.5))
            self._stream, self.codec = stream, codec
            return
        raise InputError(f"{self.path}: no usable mp4 encoder in this FFmpeg build ({'; '.join(errors)})")

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB frame, H x W x 3 uint8, of the same size as the first."""
        import av

        arr = np.asarray(frame)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise UsageError(f"frame must be H x W x 3 uint8, got shape {arr.shape} dtype {arr.dtype}")
        if self._tmp is None:
            raise UsageError(f"{self.path}: writer is already closed")
        if self._container is None:
            self._start(arr.shape[0], arr.shape[1])
        if arr.shape[:2] != self._size:
            raise UsageError(f"{self.path}: frame size {arr.shape[:2]} differs from the first frame's {self._size}")
        pad = ((0, arr.shape[0] % 2), (0, arr.shape[1] % 2), (0, 0))
        if pad[0][1] or pad[1][1]:
            arr = np.pad(arr, pad, mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
        vf.pts = self.num_frames
        vf.time_base = 1 / Fraction(self.fps).limit_denominator(1001)
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.num_frames += 1

    def close(self) -> Path:
        """Flush the encoder and move the finished file onto `path`. Returns `path`."""
        if self._tmp is None:
            return self.path
        if self.num_frames == 0:
            self.abort()
            raise UsageError(f"{self.path}: no frames were written; nothing saved")
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Stop writing and delete the temporary file; `path` is left as it was."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - already failing; the partial file is deleted below
                pass
            self._container = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
