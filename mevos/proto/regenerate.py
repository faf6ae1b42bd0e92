"""Regenerate the committed Python code of the .proto files under <repo>/proto.

    python -m mevos.proto.regenerate            # rewrite mevos/proto/mevos/v1/*
    python -m mevos.proto.regenerate --check    # exit 1 if the committed files are stale

The exact command it runs (from the repository root), then a rewrite of the generated absolute
imports (`from mevos.v1 import x_pb2`) into package-relative ones (`from . import x_pb2`), so the
code imports as `mevos.proto.mevos.v1.tracking_pb2` without touching sys.path:

    python -m grpc_tools.protoc -I proto --plugin=protoc-gen-mypy=$(which protoc-gen-mypy) --python_out=mevos/proto --grpc_python_out=mevos/proto \\
        --mypy_out=mevos/proto proto/mevos/v1/*.proto

Needs the dev extra (grpcio-tools, mypy-protobuf). Generated code embeds the protobuf version of
grpcio-tools' protoc and checks at import that the runtime is not older.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # mevos/proto
REPO = PACKAGE_DIR.parents[1]
PROTO_ROOT = REPO / "proto"
#: generated files are written under PACKAGE_DIR / <proto package path>
GENERATED_GLOBS = ("*_pb2.py", "*_pb2_grpc.py", "*_pb2.pyi", "*_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    """The .proto files to compile, relative to PROTO_ROOT, sorted."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def _relative_imports(text: str, module_dir: str) -> str:
    """`from mevos.v1 import a_pb2 as b` -> `from . import a_pb2 as b` for modules generated into
    the same folder (module_dir is the dotted proto package path, e.g. 'mevos.v1')."""
    return re.sub(rf"^from {re.escape(module_dir)} import ", "from . import ", text, flags=re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into out_dir and fix imports; returns the generated files (relative to out_dir)."""
    protos = proto_files()
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    plugin = shutil.which("protoc-gen-mypy") or shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit("protoc-gen-mypy not found: pip install mypy-protobuf (part of the dev extra)")
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--plugin=protoc-gen-mypy={plugin}",
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", f"--mypy_out={out_dir}",
        *[str(PROTO_ROOT / p) for p in protos],
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"protoc failed ({done.returncode}):\n{done.stderr}")
    files = sorted(p.relative_to(out_dir) for g in GENERATED_GLOBS for p in out_dir.rglob(g))
    for rel in files:
        path = out_dir / rel
        dotted = ".".join(rel.parent.parts)
        path.write_text(_relative_imports(path.read_text(), dotted))
    return files


def stale_files() -> list[str]:
    """Generated files that differ from (or are missing beside) what protoc makes now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for rel in fresh:
            committed = PACKAGE_DIR / rel
            if not committed.is_file() or committed.read_text() != (Path(tmp) / rel).read_text():
                stale.append(str(rel))
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for s in stale:
            print(f"stale: mevos/proto/{s}")
        return 1 if stale else 0
    for rel in generate(PACKAGE_DIR):
        print(f"wrote mevos/proto/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
