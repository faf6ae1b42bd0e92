"""`mevos` command line: one subcommand per job, each in the module that owns the job.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`; it is imported only
when its subcommand runs, so `mevos eval` never imports grpc and `mevos --help` imports nothing.
Errors of type MevosError become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mevos import __version__
from mevos.errors import MevosError

#: subcommand -> (module, one-line help). Order is the order of `mevos --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("mevos.runtime.cli", "segment objects through a video given their masks on the first frame"),
    "eval": ("mevos.eval.cli", "score result masks against DAVIS ground truth (J&F, official protocol)"),
    "train": ("mevos.train.cli", "self-supervised training on unlabeled video (correspondence + mask embedding)"),
    "export": ("mevos.export.cli", "export a checkpoint to ONNX graphs and TensorRT engines"),
    "serve": ("mevos.server.cli", "serve tracking sessions over gRPC"),
    "stream": ("mevos.client.cli", "stream a video to a mevos server and write the masks it returns"),
    "bench": ("mevos.bench.cli", "measure latency and FPS of each stage and backend"),
}


def _top_parser() -> argparse.ArgumentParser:
    from mevos import env

    epilog = "environment variables:\n" + "\n".join(f"  {k:24s} {v}" for k, v in env.VARIABLES.items())
    parser = argparse.ArgumentParser(
        prog="mevos",
        description="Self-supervised video object segmentation: train, export, serve, segment, evaluate.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mevos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mevos` console script. Returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # --help, --version, or an error for an unknown command
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(
            prog=f"mevos {name}",
            description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        args = parser.parse_args(rest)
        return int(module.run(args) or 0)
    except MevosError as exc:
        print(f"mevos {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mevos {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
