"""Every environment variable mevos reads, read here and documented once."""

from __future__ import annotations

import os
from pathlib import Path

#: name -> what it does. `mevos --help` prints this table.
VARIABLES: dict[str, str] = {
    "MEVOS_FORCE_REFERENCE": "1 = affinity_impl 'auto' uses the pure-PyTorch reference (no fused CUDA kernels, no compiled CPU operator)",
    "MEVOS_CACHE_DIR": "where compiled kernels and other caches go (default: ~/.cache/mevos)",
    "MEVOS_CXX": "C++ compiler for the CPU affinity operator (default: c++, g++ or clang++ on PATH)",
    "MEVOS_TOKEN": "bearer token the gRPC server requires and the client sends (see `mevos serve --help`)",
}


def flag(name: str) -> bool:
    """True when the variable is set to 1/true/yes/on (case-insensitive)."""
    assert name in VARIABLES, name
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def value(name: str) -> str | None:
    """The variable's value, or None when unset or empty."""
    assert name in VARIABLES, name
    v = os.environ.get(name, "").strip()
    return v or None


def load_token(token_file: str | None) -> str | None:
    """The bearer token from `token_file` (whitespace stripped), else $MEVOS_TOKEN, else None (no
    auth). Shared by `mevos serve` and the client, neither of which the other imports."""
    from mevos.errors import InputError

    if token_file:
        p = Path(token_file)
        if not p.is_file():
            raise InputError(f"token file {p} does not exist")
        token = p.read_text().strip()
        if not token:
            raise InputError(f"token file {p} is empty")
        return token
    return value("MEVOS_TOKEN")


def cache_dir() -> Path:
    """The cache root: $MEVOS_CACHE_DIR, else $XDG_CACHE_HOME/mevos, else ~/.cache/mevos."""
    v = value("MEVOS_CACHE_DIR")
    if v:
        return Path(v)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mevos"
