"""DAVIS / YouTube-VOS folders: layouts built in tmp_path, and the real DAVIS-2016 data when present."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mevos.data import DavisFolder, YouTubeVOSFolder, write_label_png
from mevos.errors import InputError


def _seq(root, name: str, n: int, masks: list[int], res: str = "480p", start: int = 0) -> None:
    img = root / "JPEGImages" / res / name
    ann = root / "Annotations" / res / name
    img.mkdir(parents=True)
    ann.mkdir(parents=True)
    for t in range(start, start + n):
        Image.fromarray(np.full((6, 8, 3), t * 10, np.uint8)).save(img / f"{t:05d}.jpg")
    for t in masks:
        lab = np.zeros((6, 8), np.uint8)
        lab[1:3, 1 + t % 4] = 1 + t % 3
        write_label_png(ann / f"{t:05d}.png", lab)


def test_sequence_list_sources(tmp_path) -> None:
    _seq(tmp_path, "b", 2, [0, 1])
    _seq(tmp_path, "a", 2, [0, 1])
    assert DavisFolder(tmp_path).sequences == ["a", "b"]  # folders, sorted
    (tmp_path / "sequences.txt").write_text("b\na\n")
    assert DavisFolder(tmp_path).sequences == ["b", "a"]
    (tmp_path / "ImageSets" / "2016").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2016" / "val.txt").write_text("a\n")
    assert DavisFolder(tmp_path).sequences == ["a"]
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("b\n")
    assert DavisFolder(tmp_path).sequences == ["b"]
    assert DavisFolder(tmp_path, year="2016").sequences == ["a"]


def test_sparse_masks_and_frames_not_starting_at_zero(tmp_path) -> None:
    _seq(tmp_path, "s", 5, [7, 9], start=7)
    d = DavisFolder(tmp_path)
    assert [p.name for p in d.annotation_paths("s")] == ["00007.png", "00009.png"]
    assert d.first_mask("s")[1, 4] == 2
    assert len(list(d.masks("s"))) == 2
    assert d.frames("s").num_frames == 5


def test_davis_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        DavisFolder(tmp_path / "nope")
    _seq(tmp_path, "s", 3, [1], res="1080p")
    with pytest.raises(InputError, match=r"JPEGImages/480p.*found resolutions: 1080p"):
        DavisFolder(tmp_path)
    d = DavisFolder(tmp_path, resolution="1080p")
    with pytest.raises(InputError, match=r"00000\.png.*first frame"):
        d.first_mask("s")
    with pytest.raises(InputError, match="'ghost'"):
        d.frame_paths("ghost")


def test_youtube_vos_sparse_annotations(tmp_path) -> None:
    split = tmp_path / "valid"
    for vid in ("v2", "v1"):
        img, ann = split / "JPEGImages" / vid, split / "Annotations" / vid
        img.mkdir(parents=True)
        ann.mkdir(parents=True)
        for t in (0, 5, 10, 15):
            Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(img / f"{t:05d}.jpg")
        for t, oid in ((5, 1), (10, 2)):
            write_label_png(ann / f"{t:05d}.png", np.full((4, 6), oid, np.uint8))
    meta = {"videos": {"v1": {"objects": {"1": {"category": "cat", "frames": ["00005", "00010"]}}}}}
    (split / "meta.json").write_text(json.dumps(meta))
    yt = YouTubeVOSFolder(tmp_path, split="valid")
    assert yt.sequences == ["v1", "v2"]
    assert {i: p.name for i, p in yt.annotation_paths("v1").items()} == {1: "00005.png", 2: "00010.png"}
    index, first = yt.first_mask("v1")
    assert index == 1 and first.max() == 1
    assert [(i, m.max()) for i, m in yt.masks("v1")] == [(1, 1), (2, 2)]
    assert yt.meta("v1")["objects"]["1"]["category"] == "cat" and yt.meta("v2") == {}
    assert yt.frames("v1").num_frames == 4
    assert YouTubeVOSFolder(split, split="valid").sequences == ["v1", "v2"]  # the split folder itself
    (split / "Annotations" / "v2" / "00003.png").write_bytes((split / "Annotations" / "v2" / "00005.png").read_bytes())
    with pytest.raises(InputError, match=r"00003\.png.*no frame"):
        yt.annotation_paths("v2")


def test_real_davis2016_blackswan(shared_data) -> None:
    root = shared_data / "davis2016"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    d = DavisFolder(root)
    assert "blackswan" in d.sequences and len(d.sequences) == 17
    src = d.frames("blackswan")
    assert src.num_frames == 50 and src.size == (480, 854)
    assert len(d.frame_paths("blackswan")) == len(d.annotation_paths("blackswan")) == 50
    mask = d.first_mask("blackswan")
    assert mask.shape == (480, 854) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1} and (mask == 1).sum() > 5000
    frame = next(iter(src))
    assert frame.shape == (480, 854, 3) and frame.dtype == np.uint8


def test_real_sparse_prompts_and_1080p(shared_data) -> None:
    cutie = shared_data / "firstframe" / "cutie-examples"
    aot = shared_data / "firstframe" / "aot-vspw-demo"
    if not cutie.is_dir() or not aot.is_dir():
        pytest.skip(f"{shared_data / 'firstframe'} is absent")
    judo = DavisFolder(cutie)
    assert [p.stem for p in judo.annotation_paths("judo")] == ["00000", "00005", "00008", "00013"]
    assert set(np.unique(judo.first_mask("judo"))) == {0, 1}
    vspw = DavisFolder(aot, resolution="1080p")
    seq = vspw.sequences[0]
    assert vspw.frame_paths(seq)[0].name == "00000693.jpg"
    assert vspw.first_mask(seq).shape == (1080, 1920)
