"""Draw label maps over frames for viewing: palette colours blended in, object contours darkened."""

from __future__ import annotations

import numpy as np

from mevos.data.palette import PALETTE
from mevos.errors import UsageError


def boundaries(labels: np.ndarray) -> np.ndarray:
    """H x W bool: object pixels (id > 0) with a 4-neighbour of a different id (the inner contour)."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    diff_v = lab[1:, :] != lab[:-1, :]
    diff_h = lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    return edge & (lab > 0)


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend each object's palette colour over `frame` and draw a 1-px darker contour around it.

    frame: H x W x 3 uint8 RGB. labels: H x W integer ids, 0 = background (left untouched).
    alpha: weight of the object colour (0 = frame only, 1 = flat colour). Returns H x W x 3 uint8.
    """
    img = np.asarray(frame)
    lab = np.asarray(labels)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise UsageError(f"frame must be H x W x 3 uint8, got shape {img.shape} dtype {img.dtype}")
    if lab.shape != img.shape[:2]:
        raise UsageError(f"labels shape {lab.shape} does not match frame size {img.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"alpha must be in [0, 1], got {alpha}")
    lab = lab.astype(np.uint8, copy=False)
    colours = PALETTE[lab].astype(np.float32)
    out = img.astype(np.float32)
    obj = lab > 0
    out[obj] = (1.0 - alpha) * out[obj] + alpha * colours[obj]
    edge = boundaries(lab)
    out[edge] = colours[edge] * 0.5
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
