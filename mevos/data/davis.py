"""DAVIS and YouTube-VOS style data set folders.

DAVIS: <root>/JPEGImages/<res>/<seq>/*.jpg and <root>/Annotations/<res>/<seq>/*.png, one mask per
frame with the same stem (DAVIS-2016/2017), or only some frames (demo prompts).
YouTube-VOS: <root>/<split>/JPEGImages/<vid>/*.jpg, <root>/<split>/Annotations/<vid>/*.png on some
frames only (where objects appear), and an optional <root>/<split>/meta.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mevos.data.palette import read_label_png
from mevos.data.video import FrameSource, ImageFolderSource, list_images
from mevos.errors import InputError


def _read_list(path: Path) -> list[str]:
    """Sequence names from a list file: one per line, or DAVIS-2016 '/JPEGImages/480p/seq/x.jpg ...' lines."""
    names: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.split()[0]
        name = Path(first).parent.name if "/" in first else first
        if name not in names:
            names.append(name)
    if not names:
        raise InputError(f"{path}: sequence list is empty")
    return names


class DavisFolder:
    """A DAVIS-layout folder. `sequences` is the list the folder declares, in its order.

    The list comes from ImageSets/<year>/<split>.txt (year 2017, then 2016, when not given), else
    ImageSets/<res>/<split>.txt (DAVIS-2016 path lists), else <root>/sequences.txt, else every
    folder under JPEGImages/<res>, sorted.
    """

    def __init__(
        self, root: str | os.PathLike[str], resolution: str = "480p", split: str = "val", year: str | None = None
    ) -> None:
        self.root = Path(root)
        self.resolution = resolution
        if not self.root.is_dir():
            raise InputError(f"{self.root}: DAVIS folder does not exist")
        self.image_root = self.root / "JPEGImages" / resolution
        self.annotation_root = self.root / "Annotations" / resolution
        if not self.image_root.is_dir():
            found = sorted(d.name for d in (self.root / "JPEGImages").glob("*") if d.is_dir())
            hint = f" (found resolutions: {', '.join(found)})" if found else ""
            raise InputError(f"{self.root}: no JPEGImages/{resolution} folder{hint}")
        self.sequences: list[str] = self._list_sequences(split, year)

    def _list_sequences(self, split: str, year: str | None) -> list[str]:
        sets = self.root / "ImageSets"
        if year is not None:
            candidates = [sets / year / f"{split}.txt"]
            if not candidates[0].is_file():
                raise InputError(f"{candidates[0]}: sequence list does not exist")
        else:
            candidates = [sets / "2017" / f"{split}.txt", sets / "2016" / f"{split}.txt",
                          sets / self.resolution / f"{split}.txt", self.root / "sequences.txt"]
        for c in candidates:
            if c.is_file():
                return _read_list(c)
        seqs = sorted(d.name for d in self.image_root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not seqs:
            raise InputError(f"{self.image_root}: no sequence folders")
        return seqs

    def _seq_dir(self, seq: str) -> Path:
        d = self.image_root / seq
        if not d.is_dir():
            raise InputError(f"{d}: sequence '{seq}' has no frame folder")
        return d

    def frame_paths(self, seq: str) -> list[Path]:
        """The frame image files of `seq`, sorted by name."""
        paths = list_images(self._seq_dir(seq))
        if not paths:
            raise InputError(f"{self.image_root / seq}: folder has no images")
        return paths

    def frames(self, seq: str) -> FrameSource:
        """Lazy RGB frames of `seq` (H x W x 3 uint8)."""
        return ImageFolderSource(self._seq_dir(seq))

    def annotation_paths(self, seq: str) -> list[Path]:
        """The annotation PNGs of `seq`, sorted; one per frame in DAVIS, fewer in sparse (prompt) folders."""
        d = self.annotation_root / seq
        if not d.is_dir():
            raise InputError(f"{d}: sequence '{seq}' has no annotation folder")
        return sorted(p for p in d.glob("*.png") if not p.name.startswith("."))

    def first_mask(self, seq: str) -> np.ndarray:
        """The label map (H x W uint8) of the first frame: the PNG with the first frame's stem."""
        first = self.frame_paths(seq)[0]
        path = self.annotation_root / seq / f"{first.stem}.png"
        if not path.is_file():
            raise InputError(f"{path}: no mask for the first frame {first.name} of '{seq}'")
        return read_label_png(path)

    def masks(self, seq: str) -> Iterator[np.ndarray]:
        """Label maps (H x W uint8) of every annotation PNG of `seq`, in name order, read lazily."""
        for p in self.annotation_paths(seq):
            yield read_label_png(p)


class YouTubeVOSFolder:
    """A YouTube-VOS split: `root` is the data set root holding <split>/, or the split folder itself.

    Annotations are sparse: `annotation_paths(vid)` maps frame index -> PNG for the annotated frames.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        if split not in ("train", "valid", "test"):
            raise InputError(f"YouTube-VOS split must be 'train', 'valid' or 'test', got {split!r}")
        r = Path(root)
        if not r.is_dir():
            raise InputError(f"{r}: YouTube-VOS folder does not exist")
        self.root = r / split if (r / split / "JPEGImages").is_dir() else r
        if not (self.root / "JPEGImages").is_dir():
            raise InputError(f"{r}: no {split}/JPEGImages or JPEGImages folder")
        self.split = split
        self._meta = self._read_meta()
        self.sequences: list[str] = sorted(
            d.name for d in (self.root / "JPEGImages").iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not self.sequences:
            raise InputError(f"{self.root / 'JPEGImages'}: no video folders")

    def _read_meta(self) -> dict[str, Any]:
        path = self.root / "meta.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return dict(data["videos"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a YouTube-VOS meta.json ({type(exc).__name__}: {exc})") from exc

    def meta(self, seq: str) -> dict[str, Any]:
        """The video's meta.json entry ({'objects': {id: {'category', 'frames'}}}), or {} without meta.json."""
        return dict(self._meta.get(seq, {}))

    def frame_paths(self, seq: str) -> list[Path]:
        """The frame JPEGs of `seq`, sorted by name."""
        d = self.root / "JPEGImages" / seq
        if not d.is_dir():
            raise InputError(f"{d}: video '{seq}' has no frame folder")
        paths = list_images(d)
        if not paths:
            raise InputError(f"{d}: folder has no images")
        return paths

    def frames(self, seq: str) -> FrameSource:
        """Lazy RGB frames of `seq` (H x W x 3 uint8)."""
        self.frame_paths(seq)
        return ImageFolderSource(self.root / "JPEGImages" / seq)

    def annotation_paths(self, seq: str) -> dict[int, Path]:
        """Frame index (into frame_paths) -> annotation PNG, for the annotated frames only."""
        index = {p.stem: i for i, p in enumerate(self.frame_paths(seq))}
        d = self.root / "Annotations" / seq
        if not d.is_dir():
            return {}
        out: dict[int, Path] = {}
        for p in sorted(d.glob("*.png")):
            if p.stem not in index:
                raise InputError(f"{p}: annotation has no frame {p.stem} in {self.root / 'JPEGImages' / seq}")
            out[index[p.stem]] = p
        return out

    def first_mask(self, seq: str) -> tuple[int, np.ndarray]:
        """(frame index, H x W uint8 label map) of the first annotated frame."""
        ann = self.annotation_paths(seq)
        if not ann:
            raise InputError(f"{self.root / 'Annotations' / seq}: video '{seq}' has no annotations")
        i = min(ann)
        return i, read_label_png(ann[i])

    def masks(self, seq: str) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, H x W uint8 label map) for each annotated frame, in frame order."""
        for i, p in sorted(self.annotation_paths(seq).items()):
            yield i, read_label_png(p)
