"""Palette PNG io: exact round trips, every accepted mode, and the errors for bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from mevos.data import PALETTE, colorize, read_label_png, write_label_png
from mevos.errors import InputError, UsageError


def test_palette_is_the_voc_colour_map() -> None:
    assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
    assert PALETTE[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert PALETTE[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in PALETTE.tolist()}) == 256


def test_label_png_round_trip_is_exact(tmp_path) -> None:
    labels = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    path = tmp_path / "m.png"
    write_label_png(path, labels)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert im.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    back = read_label_png(path)
    assert back.dtype == np.uint8 and np.array_equal(back, labels)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temporary file left behind


def test_write_respects_umask_and_replaces(tmp_path) -> None:
    path = tmp_path / "m.png"
    write_label_png(path, np.zeros((4, 4), np.uint8))
    write_label_png(path, np.full((4, 4), 3, np.uint8))
    assert read_label_png(path).max() == 3
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_grayscale_and_rgb_masks(tmp_path) -> None:
    labels = np.array([[0, 1, 2], [3, 4, 0]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "l.png")
    assert np.array_equal(read_label_png(tmp_path / "l.png"), labels)
    Image.fromarray(colorize(labels)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_label_png(tmp_path / "rgb.png"), labels)


def test_rgb_mask_with_foreign_colour_is_refused(tmp_path) -> None:
    rgb = colorize(np.ones((3, 3), np.uint8))
    rgb[1, 2] = (10, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(InputError, match=r"bad\.png.*\(10, 20, 30\).*x=2, y=1"):
        read_label_png(tmp_path / "bad.png")


def test_unreadable_masks(tmp_path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputError, match="notes.png"):
        read_label_png(text)
    with pytest.raises(InputError, match="missing.png.*does not exist"):
        read_label_png(tmp_path / "missing.png")


def test_write_rejects_bad_arrays(tmp_path) -> None:
    with pytest.raises(UsageError):
        write_label_png(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(UsageError):
        write_label_png(tmp_path / "a.png", np.full((2, 2), 300))
    with pytest.raises(InputError, match="does not exist"):
        write_label_png(tmp_path / "no" / "a.png", np.zeros((2, 2), np.uint8))
