"""Which weights to run when the user names none."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mevos.model.checkpoint import load_checkpoint
from mevos.model.config import preset
from mevos.model.network import MevosNet, build_model

#: Trained `small` weights shipped inside the package (written by `mevos train`), if present.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "small.pt"


def load_default_model(path: str | os.PathLike[str] | None = None) -> tuple[MevosNet, dict[str, Any]]:
    """(model, metadata) from `path`; with no path, the shipped checkpoint, or, when none is
    shipped, an untrained `small` model with seeded weights (metadata says trained=False)."""
    if path is not None:
        return load_checkpoint(path)
    if DEFAULT_CHECKPOINT.is_file():
        return load_checkpoint(DEFAULT_CHECKPOINT)
    return build_model(preset("small"), seed=0), {"trained": False, "source": "untrained small preset (seed 0)"}


def describe_weights(path: str | os.PathLike[str] | None) -> str:
    """One line saying which weights run, and plainly when they are untrained."""
    if path is not None:
        return f"weights from {path}"
    if DEFAULT_CHECKPOINT.is_file():
        return f"shipped weights {DEFAULT_CHECKPOINT.name}"
    return "UNTRAINED weights (small preset, seed 0): no trained checkpoint is shipped yet, expect poor masks"
