"""Export a checkpoint to three ONNX graphs (encode_key, encode_value, decode) with dynamic
height, width and object count, and optionally build TensorRT engines from them.

OUT receives encode_key.onnx, encode_value.onnx, decode.onnx and manifest.json; with
--format tensorrt also encode_key.engine, ... and engine.json. The onnxruntime and tensorrt
backends take OUT as their --checkpoint: `mevos segment ... --backend onnxruntime --checkpoint OUT`
(given a .pt checkpoint instead, they export it into the cache themselves).

examples:
  mevos export --checkpoint runs/small/last.pt --out exports/small
  mevos export --checkpoint runs/small/last.pt --out exports/small --format tensorrt --precision fp16 \\
      --max-objects 8 --min-resolution 240x320 --opt-resolution 480x856 --max-resolution 1088x1920
  mevos export --out exports/small --format tensorrt --rebuild    # new GPU or TensorRT: engines again
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mevos.errors import InputError, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mevos.export.onnx import DEFAULT_OPSET

    parser.add_argument("--checkpoint", "--model", dest="checkpoint", default=None, metavar="CKPT",
                        help="checkpoint (.pt) to export (default: the shipped small weights, or untrained small "
                             "weights when none are shipped)")
    parser.add_argument("--out", required=True, metavar="DIR", help="export folder (must not exist, or be empty)")
    parser.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx",
                        help="onnx: the ONNX graphs; tensorrt: the ONNX graphs and TensorRT engines (default onnx)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the ONNX Runtime vs torch comparison after the ONNX export")
    g = parser.add_argument_group("TensorRT (--format tensorrt)")
    g.add_argument("--rebuild", action="store_true",
                   help="build the engines again from the ONNX already in OUT (after a GPU or TensorRT change)")
    g.add_argument("--precision", choices=["fp32", "fp16"], default=None,
                   help="engine precision (default fp16; the ONNX graphs are always fp32)")
    g.add_argument("--max-objects", type=int, default=8, metavar="N",
                   help="most objects per call the engines accept (default 8)")
    g.add_argument("--min-resolution", default="128x128", metavar="HxW",
                   help="smallest padded input the engines accept (default 128x128)")
    g.add_argument("--opt-resolution", default="480x856", metavar="HxW",
                   help="input size the engines are tuned for (default 480x856, DAVIS 480p)")
    g.add_argument("--max-resolution", default="1088x1920", metavar="HxW",
                   help="largest padded input the engines accept (default 1088x1920)")
    g.add_argument("--timing-cache", default=None, metavar="PATH",
                   help="TensorRT timing cache file, read and updated (default: one per TensorRT version "
                        "and GPU architecture under the mevos cache directory)")
    g.add_argument("--workspace", type=float, default=4.0, metavar="GIB",
                   help="TensorRT builder workspace limit in GiB (default 4)")
    g.add_argument("--gpu", type=int, default=0, metavar="N", help="CUDA device to build for (default 0)")


def _profile(args: argparse.Namespace):  # noqa: ANN202
    from mevos.export.manifest import Profile, parse_resolution

    if args.max_objects < 1:
        raise UsageError(f"--max-objects must be >= 1, got {args.max_objects}")
    return Profile.with_max_objects(parse_resolution(args.min_resolution), parse_resolution(args.opt_resolution),
                                    parse_resolution(args.max_resolution), args.max_objects)


def check_parity(folder: Path, size: tuple[int, int] = (120, 200), objects: int = 2) -> dict[str, float]:
    """Max |ONNX Runtime - torch| per graph on random inputs (fp32, CPU), through plain
    ONNX Runtime sessions (export does not use the runtime package)."""
    import torch

    from mevos.errors import require
    from mevos.export.manifest import load_onnx_export
    from mevos.model.checkpoint import load_checkpoint
    from mevos.model.graphs import graph_specs
    from mevos.model.weights import load_default_model

    export = load_onnx_export(folder)
    ckpt = export.manifest.get("checkpoint")
    if ckpt and Path(ckpt["file"]).is_file():
        model, _ = load_checkpoint(ckpt["file"])
    elif ckpt is None:
        model = load_default_model(None)[0]
    else:
        return {}  # the checkpoint moved away since: nothing to compare with
    ort = require("onnxruntime", "onnx", "the parity check of an ONNX export")
    specs = graph_specs(export.config)
    gen = torch.Generator().manual_seed(1)
    diffs = {}
    with torch.inference_mode():
        for name, spec in specs.items():
            inputs = [torch.rand(s, generator=gen) for s in spec.input_shapes(*size, objects).values()]
            ref = getattr(model, name)(*inputs)
            ref = ref if isinstance(ref, tuple) else (ref,)
            session = ort.InferenceSession(str(export.paths[name]), providers=["CPUExecutionProvider"])
            feeds = {k: v.numpy() for k, v in zip(spec.input_names, inputs, strict=True)}
            got = tuple(torch.from_numpy(o) for o in session.run(spec.output_names, feeds))
            diffs[name] = max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True))
    return diffs


def run(args: argparse.Namespace) -> int:
    from mevos.export.manifest import ONNX_MANIFEST, load_onnx_export
    from mevos.export.onnx import export_onnx
    from mevos.model.weights import describe_weights, load_default_model

    out = Path(args.out)
    trt = args.format == "tensorrt"
    if args.precision is not None and not trt:
        raise UsageError("--precision applies to TensorRT engines (--format tensorrt); the ONNX graphs are fp32")
    if args.rebuild and not trt:
        raise UsageError("--rebuild rebuilds TensorRT engines: add --format tensorrt")
    if args.rebuild and args.checkpoint is not None:
        raise UsageError("--rebuild builds from the ONNX already in OUT; leave out --checkpoint (or drop --rebuild "
                         "and pass --force to export the checkpoint again)")
    if not args.rebuild and out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise InputError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    profile = _profile(args) if trt else None
    if trt:
        from mevos.export.tensorrt import gpu_target, require_tensorrt

        require_tensorrt("--format tensorrt")  # before writing anything
        gpu_target(args.gpu)

    if args.rebuild:
        export = load_onnx_export(out)
        print(f"mevos export: rebuilding the TensorRT engines from the ONNX in {out}", file=sys.stderr)
    else:
        model, _ = load_default_model(args.checkpoint)
        print(f"mevos export: {describe_weights(args.checkpoint)} ({model.config.name} preset) -> {out}",
              file=sys.stderr)
        export = export_onnx(model, out, opset=args.opset, checkpoint=args.checkpoint, force=args.force)
        for name, path in export.paths.items():
            print(f"  {path.name:20s} {path.stat().st_size / 1e6:7.2f} MB  sha256 {export.manifest['graphs'][name]['sha256'][:16]}")
        print(f"  {ONNX_MANIFEST}")
        if not args.no_check:
            _print_check(out)

    if trt:
        from mevos.export.tensorrt import build_engines

        assert profile is not None
        manifest = build_engines(out, precision=args.precision or "fp16", profile=profile,
                                 timing_cache=args.timing_cache, workspace_gib=args.workspace, device=args.gpu)
        t = manifest["tensorrt"]
        print(f"mevos export: TensorRT {t['version']} {t['precision']} engines for {t['gpu']} (sm_"
              f"{t['compute_capability'].replace('.', '')}), inputs {profile.min_size[0]}x{profile.min_size[1]} to "
              f"{profile.max_size[0]}x{profile.max_size[1]}, 1 to {profile.max_objects} objects:")
        for entry in manifest["graphs"].values():
            print(f"  {entry['file']:20s} {(out / entry['file']).stat().st_size / 1e6:7.2f} MB")
        print("  engine.json")
    return 0


def _print_check(out: Path) -> None:
    from mevos.errors import MissingExtraError

    try:
        diffs = check_parity(out)
    except MissingExtraError:
        print("  (onnxruntime is not installed: no ONNX Runtime vs torch check)", file=sys.stderr)
        return
    if diffs:
        print("  ONNX Runtime vs torch, max abs difference at 120x200, 2 objects: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
