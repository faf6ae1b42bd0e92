"""Fixtures of the training tests: tiny synthetic videos written as frame folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mevos.data.synthetic import SyntheticConfig, generate, write_synthetic
from mevos.train.config import train_preset


def write_videos(root: Path, count: int = 3, frames: int = 10) -> Path:
    """`count` synthetic videos as <root>/v<i>/*.jpg (72 x 96 frames); returns root."""
    for i in range(count):
        video = generate(SyntheticConfig(height=72, width=96, num_frames=frames, num_objects=2, seed=i, name=f"v{i}"))
        src = write_synthetic(video, root / ".tmp")
        shutil.move(str(src), root / f"v{i}")
    shutil.rmtree(root / ".tmp")
    return root


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic videos of 10 frames (read-only: copy before damaging them)."""
    return write_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture()
def tiny():
    """The `tiny` training preset: 64 x 64 crops, batch 2, 1 + 1 epochs."""
    return train_preset("tiny")
