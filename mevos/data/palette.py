"""Label maps as palette PNGs: the DAVIS / PASCAL VOC colour map, reading and atomic writing.

A label map is an H x W uint8 array: 0 = background, 1..255 = object ids (DAVIS-2017 convention;
the DAVIS evaluator reads 255 as "void"). On disk it is a mode-'P' PNG whose pixel values are the
ids and whose palette is `PALETTE`, so any image viewer shows the objects in DAVIS colours.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mevos.atomic import atomic_open
from mevos.errors import InputError, UsageError


def _voc_palette() -> np.ndarray:
    """The bit-interleaving PASCAL VOC colour map: id bits (0,1,2) go to the high bits of (R,G,B)."""
    ids = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    c = ids.copy()
    for j in range(8):
        for ch in range(3):
            pal[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c >>= 3
    return pal.astype(np.uint8)


#: (256, 3) uint8: colour of label id i is PALETTE[i]. PALETTE[0] is black, PALETTE[1] is (128, 0, 0).
PALETTE: np.ndarray = _voc_palette()
PALETTE.setflags(write=False)

# The map is a bijection of ids onto 256 distinct colours, so an RGB mask can be inverted exactly.
_KEYS = (PALETTE[:, 0].astype(np.int64) << 16) | (PALETTE[:, 1].astype(np.int64) << 8) | PALETTE[:, 2]
_ORDER = np.argsort(_KEYS)
_SORTED_KEYS = _KEYS[_ORDER]


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label map (H x W uint8) -> its palette colours (H x W x 3 uint8)."""
    return PALETTE[np.asarray(labels, dtype=np.uint8)]


def rgb_to_labels(rgb: np.ndarray, source: str = "image") -> np.ndarray:
    """Invert the palette: H x W x 3 uint8 colours -> H x W uint8 ids.

    Raises InputError naming `source` when a colour is not a palette colour.
    """
    rgb = np.asarray(rgb, dtype=np.uint8)
    keys = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pos = np.searchsorted(_SORTED_KEYS, keys).clip(0, 255)
    ok = _SORTED_KEYS[pos] == keys
    if not ok.all():
        y, x = np.argwhere(~ok)[0]
        raise InputError(
            f"{source}: RGB mask has colour {tuple(int(v) for v in rgb[y, x])} at (x={x}, y={y}) that is "
            "not a DAVIS palette colour; save masks as palette ('P') or grayscale ('L') PNGs of object ids"
        )
    return _ORDER[pos].astype(np.uint8)


def read_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label map: H x W uint8 object ids.

    Mode 'P': the palette indices. Mode 'L' / '1': the values. Mode 'RGB' / 'RGBA' (alpha ignored):
    each colour mapped back through PALETTE, InputError if any colour is not a palette colour.
    16/32-bit integer images are accepted when every value fits in 0..255.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: mask file does not exist")
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                return np.array(im, dtype=np.uint8)
            if mode in ("L", "1"):
                return np.array(im.convert("L"), dtype=np.uint8)
            if mode in ("RGB", "RGBA"):
                return rgb_to_labels(np.array(im.convert("RGB")), str(p))
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.array(im)
                if arr.min() < 0 or arr.max() > 255:
                    raise InputError(f"{p}: {mode} mask has values outside 0..255; expected object ids")
                return arr.astype(np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot read as a mask image ({type(exc).__name__}: {exc})") from exc
    raise InputError(f"{p}: mask image mode {mode!r} is not supported; use a palette ('P') or grayscale ('L') PNG")


def write_label_png(path: str | os.PathLike[str], labels: np.ndarray) -> None:
    """Write labels (H x W, integer ids in 0..255) as a mode-'P' PNG with PALETTE, atomically.

    The PNG goes to a temporary file in the same folder and is renamed into place, so readers never
    see a half-written mask. The parent folder must exist.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2 or arr.dtype.kind not in "uib":
        raise UsageError(f"labels must be an H x W integer array, got shape {arr.shape} dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise UsageError(f"labels must be in 0..255, got {arr.min()}..{arr.max()}")
    p = Path(path)
    if not p.parent.is_dir():
        raise InputError(f"{p}: folder {p.parent} does not exist")
    arr8 = np.ascontiguousarray(arr, dtype=np.uint8)
    im = Image.frombytes("P", (arr8.shape[1], arr8.shape[0]), arr8.tobytes())
    im.putpalette(PALETTE.tobytes())
    with atomic_open(p, "wb", durable=False) as f:
        im.save(f, format="PNG")
