"""`liveportrait engines export|build`: ONNX export and TensorRT engine build from the command line.

`add_engines_commands(subparsers)` adds the `engines` command to an argparse parser; each leaf sets
`func` to a handler taking the parsed namespace and returning an exit code.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

from engines.acceleration.export import (
    DEFAULT_MAX_BATCH,
    MIN_OPSET,
    PRECISIONS,
    ExportError,
    export_onnx,
    read_manifest,
)
from engines.acceleration.tensorrt_build import BuildError, build_engines
from engines.model import LivePortraitModel
from engines.weights import WeightsError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def cmd_export(args: argparse.Namespace) -> int:
    """Export the ONNX graphs of a weight bundle (`engines export`)."""
    try:
        model = LivePortraitModel.from_weights(args.weights, "cpu")
        paths = export_onnx(
            model, args.out, precision=args.precision, max_batch=args.max_batch, opset=args.opset
        )
    except (WeightsError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"manifest: {Path(args.out) / 'manifest.json'}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build TensorRT engines from an ONNX export directory (`engines build`)."""
    if importlib.util.find_spec("tensorrt") is None:
        print(
            "error: TensorRT is not installed (pip install 'liveportrait-service[tensorrt]')", file=sys.stderr
        )
        return 2
    try:
        read_manifest(args.onnx)
        paths = build_engines(args.onnx, args.out, args.max_batch, args.timing_cache)
    except (ExportError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def add_engines_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `engines export` and `engines build` to the subparsers of the `liveportrait` parser."""
    engines = subparsers.add_parser("engines", help="ONNX export and TensorRT engine build")
    commands = engines.add_subparsers(dest="engines_command", required=True)

    export = commands.add_parser("export", help="export the networks to ONNX graphs")
    export.add_argument("--weights", type=Path, required=True, help="official-layout weights directory")
    export.add_argument("--out", type=Path, required=True, help="output directory for the graphs")
    export.add_argument("--precision", choices=PRECISIONS, default="fp32")
    export.add_argument(
        "--max-batch", type=_positive, default=DEFAULT_MAX_BATCH, help="recorded for the build"
    )
    export.add_argument("--opset", type=int, default=MIN_OPSET)
    export.set_defaults(func=cmd_export)

    build = commands.add_parser("build", help="build TensorRT engines from an ONNX export")
    build.add_argument("--onnx", type=Path, required=True, help="directory written by `engines export`")
    build.add_argument("--out", type=Path, required=True, help="output directory for the engines")
    build.add_argument("--max-batch", type=_positive, default=None, help="default: the export's")
    build.add_argument("--timing-cache", type=Path, default=None, help="read and updated if given")
    build.set_defaults(func=cmd_build)
