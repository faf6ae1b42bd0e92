"""Atomic file replacement: write beside the destination, then os.replace onto it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


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
