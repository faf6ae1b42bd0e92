"""Frame sources (image folders, video files), the mp4 writer, and the overlay."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mevos.data import VideoWriter, open_frames, overlay, read_image
from mevos.data.palette import PALETTE
from mevos.errors import InputError, UsageError


def _frames(n: int, h: int, w: int) -> list[np.ndarray]:
    """Smooth, distinct frames (codecs handle them well, so read-back can be compared)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return [np.stack([(xx * 4 + 20 * t) % 256, (yy * 4) % 256, np.full_like(xx, 40 * t % 256)], -1).astype(np.uint8)
            for t in range(n)]


def _write_folder(folder, frames, ext: str = "png") -> None:
    folder.mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{t:05d}.{ext}")


def test_image_folder_in_name_order(tmp_path) -> None:
    frames = _frames(4, 24, 32)
    _write_folder(tmp_path / "seq", frames)
    (tmp_path / "seq" / "readme.txt").write_text("ignored: not an image extension")
    src = open_frames(tmp_path / "seq")
    assert (src.name, src.num_frames, src.fps, src.size) == ("seq", 4, None, (24, 32))
    got = list(src)
    assert all(np.array_equal(a, b) for a, b in zip(got, frames)) and len(got) == 4
    assert len(list(src)) == 4  # iterating again starts again


def test_jpeg_folder(tmp_path) -> None:
    frames = _frames(3, 40, 48)
    _write_folder(tmp_path / "jpg", frames, "jpg")
    got = list(open_frames(tmp_path / "jpg"))
    assert len(got) == 3 and got[0].shape == (40, 48, 3) and got[0].dtype == np.uint8
    assert np.abs(got[2].astype(int) - frames[2]).mean() < 4


def test_mp4_round_trip(tmp_path) -> None:
    path = tmp_path / "out.mp4"
    with VideoWriter(path, fps=12) as w:
        for f in _frames(7, 48, 64):
            w.write(f)
    assert w.codec == "libx264"
    src = open_frames(path)
    assert (src.name, src.num_frames, src.size) == ("out", 7, (48, 64))
    assert src.fps == pytest.approx(12)
    got = list(src)
    assert len(got) == 7 and got[3].shape == (48, 64, 3)
    assert np.abs(got[3].astype(int) - _frames(7, 48, 64)[3]).mean() < 8
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_mpeg4_fallback_and_odd_size_padding(tmp_path) -> None:
    class Fallback(VideoWriter):
        CODECS = ("no-such-codec", "mpeg4")

    with Fallback(tmp_path / "odd.mp4", fps=25) as w:
        for f in _frames(3, 31, 45):
            w.write(f)
    assert w.codec == "mpeg4"
    src = open_frames(tmp_path / "odd.mp4")
    assert src.size == (32, 46) and len(list(src)) == 3


def test_crash_leaves_no_file(tmp_path) -> None:
    path = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(path) as w:
            w.write(_frames(1, 16, 16)[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="no frames"):
        with VideoWriter(path):
            pass
    assert list(tmp_path.iterdir()) == []


def test_missing_and_empty_sources(tmp_path) -> None:
    with pytest.raises(InputError, match="nowhere.*does not exist"):
        open_frames(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*no images"):
        open_frames(tmp_path / "empty")


def test_text_file_named_jpg(tmp_path) -> None:
    _write_folder(tmp_path / "first", _frames(2, 8, 8), "jpg")
    (tmp_path / "first" / "00000.jpg").write_text("hello")
    with pytest.raises(InputError, match=r"00000\.jpg"):
        open_frames(tmp_path / "first")
    _write_folder(tmp_path / "later", _frames(3, 8, 8), "jpg")
    (tmp_path / "later" / "00002.jpg").write_text("hello")
    src = open_frames(tmp_path / "later")
    with pytest.raises(InputError, match=r"00002\.jpg"):
        list(src)
    with pytest.raises(InputError, match=r"00002\.jpg"):
        read_image(tmp_path / "later" / "00002.jpg")


def test_size_change_mid_sequence(tmp_path) -> None:
    _write_folder(tmp_path / "seq", _frames(2, 10, 12))
    Image.fromarray(_frames(1, 10, 14)[0]).save(tmp_path / "seq" / "00002.png")
    with pytest.raises(InputError, match=r"00002\.png.*14x10.*12x10"):
        list(open_frames(tmp_path / "seq"))


def test_bad_video_files(tmp_path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.mp4"):
        open_frames(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    with pytest.raises(InputError, match=r"text\.mp4"):
        open_frames(tmp_path / "text.mp4")


def test_truncated_video_with_no_frames(tmp_path) -> None:
    path = tmp_path / "full.mp4"
    with VideoWriter(path) as w:
        for f in _frames(5, 32, 32):
            w.write(f)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match=r"cut\.mp4"):
        open_frames(cut)


def test_overlay_colours_and_contour() -> None:
    frame = np.full((9, 9, 3), 100, np.uint8)
    labels = np.zeros((9, 9), np.uint8)
    labels[2:7, 2:7] = 1
    out = overlay(frame, labels, alpha=0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.array_equal(out[0, 0], frame[0, 0])  # background untouched
    inner = np.round(0.5 * 100 + 0.5 * PALETTE[1].astype(float))
    assert np.array_equal(out[4, 4], inner.astype(np.uint8))
    assert np.array_equal(out[2, 4], PALETTE[1] // 2)  # darker 1-px contour
    assert np.array_equal(out[3, 4], out[4, 4])  # ... only 1 px wide
    with pytest.raises(UsageError):
        overlay(frame, labels[:5])
