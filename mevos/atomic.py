"""Atomic file writes: write beside the destination, fsync, then os.replace onto it, so that
readers see the old file or the new one, and a crash or a full disk never leaves a partial file
under the final name."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_beside(dest: Path, suffix: str = ".partial") -> Path:
    """Create an empty hidden file next to `dest` and return its path.

    Made with O_EXCL and mode 0o666 (minus the umask), so once renamed onto `dest` the file has the
    same permissions an ordinary open() would have given it (mkstemp would leave it 0o600).
    """
    while True:
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, durable: bool = True,
                **kwargs: Any) -> Iterator[IO[Any]]:
    """A file object whose content replaces `path` when the block ends without an exception;
    on an exception the temporary file is removed and `path` is untouched. Creates the folder.
    durable=False skips the fsync: for many small files (one mask per frame) where a crash may
    lose the newest ones but must never leave a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace `path` with `data` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace `path` with `text` (UTF-8) atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)
