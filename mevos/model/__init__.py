"""The networks E, V, D, their presets, and checkpoint load/save. Shared by everything."""

from mevos.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mevos.model.config import PRESETS, ModelConfig, preset
from mevos.model.network import MevosNet, build_model

__all__ = [
    "ModelConfig",
    "PRESETS",
    "preset",
    "MevosNet",
    "build_model",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
]
