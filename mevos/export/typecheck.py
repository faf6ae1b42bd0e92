"""Type-check the TensorRT code with mypy and the `tensorrt-stubs` package (CI: TensorRT itself
cannot be installed there, so this is the check its code gets).

    pip install mypy && pip install --no-deps tensorrt-stubs
    python -m mevos.export.typecheck            # exit code of mypy; extra arguments go to mypy

tensorrt-stubs is generated from the bindings and cannot be used as installed: it has no py.typed
marker; a few of its signatures are not valid Python (parameters named `in`, a parameter without
a default after defaulted ones), which stops mypy; and its module-level `bool` (the DataType)
shadows the builtin in every annotation. This copies the stubs into the mypy cache with those
three things repaired and puts the copy first on mypy's search path. The repair renames
parameters, adds defaults and spells the builtin `builtins.bool`, so every TensorRT name and
type that mypy checks against is the stubs' own.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from mevos.errors import MissingExtraError, require

CONFIG = Path(__file__).resolve().parent / "mypy-tensorrt.ini"
ROOT = Path(__file__).resolve().parents[2]
_DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*(->.*)?:.*)$")
_BOOL = re.compile(r"\bbool\b")
_KEEP = re.compile(r"^\s*(from |import |__all__|bool\s*:)")


def _split_params(params: str) -> list[str]:
    """Split a parameter list at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in params:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


def repair_line(line: str) -> str:
    """One stub line made valid: keyword parameter names renamed, missing defaults added."""
    body = line.rstrip("\r\n")
    m = _DEF.match(body)
    if not m:
        return line
    params = _split_params(m.group(2))
    seen_default = False
    fixed = []
    for p in params:
        name = p.strip().split(":")[0].split("=")[0].strip()
        if name in ("in", "from", "is", "lambda", "def", "class", "global", "import", "pass", "return"):
            p = p.replace(f"{name}:", f"{name}_:", 1)
        if name.startswith("*"):  # keyword-only parameters need no defaults
            seen_default = False
            fixed.append(p)
            continue
        if name == "/":
            fixed.append(p)
            continue
        if "=" in p:
            seen_default = True
        elif seen_default:
            p = p.rstrip() + " = ..."
        fixed.append(p)
    return m.group(1) + ",".join(fixed) + m.group(3) + line[len(body):]


def repair_stub(text: str) -> str:
    """A whole stub made usable: every line through repair_line, and `bool` in annotations meaning
    the builtin (the stubs define a module-level `bool`, TensorRT's DataType.BOOL, which would
    otherwise turn every `-> bool` into a DataType)."""
    lines = []
    for line in text.splitlines(keepends=True):
        line = repair_line(line)
        if not _KEEP.match(line):
            line = _BOOL.sub("builtins.bool", line)
        lines.append(line)
    at = 1 if lines and lines[0].startswith("from __future__") else 0
    return "".join(lines[:at] + ["import builtins\n"] + lines[at:])


def prepare_stubs(dest: Path) -> Path:
    """Copy the installed tensorrt-stubs into `dest` (repaired); returns `dest`."""
    from importlib import metadata

    try:
        dist = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        raise MissingExtraError("tensorrt-stubs", "dev", "type-checking the TensorRT code") from None
    stubs = [f for f in dist.files or [] if str(f).endswith(".pyi")]
    for f in stubs:
        src = Path(str(dist.locate_file(f)))
        text = repair_stub(src.read_text(encoding="utf-8"))
        compile(text, str(src), "exec")  # a stub line this repair does not cover fails here, by name
        target = dest / str(f)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    api = require("mypy.api", "dev", "type-checking the TensorRT code", package="mypy")
    prepare_stubs(ROOT / ".mypy_cache" / "tensorrt-stubs")  # the config's mypy_path
    os.chdir(ROOT)  # the config names the files relative to the repository root
    stdout, stderr, status = api.run(["--config-file", str(CONFIG), *(argv or [])])
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return int(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
