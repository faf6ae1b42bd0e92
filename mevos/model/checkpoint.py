"""Checkpoints: weights, config and metadata in one file, written atomically, loaded safely.

Format: a torch.save'd dict {format, version, config, state_dict, metadata[, train_state]} holding
only tensors and plain Python types, so it loads with `weights_only=True` (no pickled code runs).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from mevos import __version__
from mevos.atomic import atomic_open
from mevos.errors import CheckpointError, UsageError
from mevos.model.config import ModelConfig
from mevos.model.network import MevosNet

FORMAT = "mevos-checkpoint"
VERSION = 1


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """torch.save through mevos.atomic: a crash never leaves a partial file under `path`."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: MevosNet,
    metadata: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write `model`'s weights and config (and optional training state) atomically to `path`."""
    meta = {"mevos_version": __version__, "torch_version": str(torch.__version__), "trained": False}
    meta.update(metadata or {})
    blob: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": meta,
    }
    if train_state is not None:
        blob["train_state"] = train_state
    return atomic_torch_save(blob, path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (on the CPU). Raises CheckpointError on a
    missing, truncated, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        # torch.save writes a zip archive whose directory sits at the end: a cut file loses it.
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint file (no zip directory)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated, corrupt, or not a torch file): {reason[:200]}"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mevos checkpoint (no '{FORMAT}' header)")
    if blob.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a mevos checkpoint of format version {blob.get('version')}, this mevos reads version {VERSION}"
        )
    for key in ("config", "state_dict", "metadata"):
        if not isinstance(blob.get(key), dict):
            raise CheckpointError(f"{path} is damaged: its '{key}' entry is missing or malformed")
    return blob


def load_checkpoint(
    path: str | os.PathLike[str], expect_preset: str | None = None
) -> tuple[MevosNet, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights strictly.

    Returns (model in eval mode on the CPU, metadata). `expect_preset` makes a checkpoint of another
    preset an error (e.g. resuming training of `small` from an `r18` file).
    """
    from mevos.model.network import MevosNet

    blob = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(blob["config"])
    except (TypeError, UsageError) as exc:
        raise CheckpointError(f"{path} has an invalid model config: {exc}") from None
    if expect_preset is not None and config.name != expect_preset:
        raise CheckpointError(
            f"{path} holds a '{config.name}' model, but a '{expect_preset}' model was asked for"
        )
    model = MevosNet(config)
    load_weights(model, blob["state_dict"], source=str(path))
    return model.eval(), dict(blob["metadata"])


def load_weights(model: MevosNet, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load: missing keys, unexpected keys and shape mismatches are all CheckpointError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    bad = [k for k, v in state_dict.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{source} does not match the model: {len(bad)} tensors have other shapes, e.g. {k} "
            f"{tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        )
    model.load_state_dict(state_dict, strict=True)
