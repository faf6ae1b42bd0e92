"""Data in and out: label PNGs, frame folders and video files, DAVIS / YouTube-VOS folders,
overlays, and the seeded synthetic video used by the demo and the tests."""

from __future__ import annotations

from mevos.data.davis import DavisFolder, YouTubeVOSFolder
from mevos.data.overlay import boundaries, overlay
from mevos.data.palette import PALETTE, colorize, read_label_png, rgb_to_labels, write_label_png
from mevos.data.synthetic import SyntheticConfig, SyntheticVideo, generate, write_synthetic
from mevos.data.video import (
    IMAGE_EXTENSIONS,
    FrameSource,
    ImageFolderSource,
    VideoFileSource,
    VideoWriter,
    open_frames,
    read_image,
)

__all__ = [
    "PALETTE",
    "colorize",
    "read_label_png",
    "rgb_to_labels",
    "write_label_png",
    "IMAGE_EXTENSIONS",
    "FrameSource",
    "ImageFolderSource",
    "VideoFileSource",
    "VideoWriter",
    "open_frames",
    "read_image",
    "overlay",
    "boundaries",
    "DavisFolder",
    "YouTubeVOSFolder",
    "SyntheticConfig",
    "SyntheticVideo",
    "generate",
    "write_synthetic",
]
