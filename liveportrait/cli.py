"""The `liveportrait` command: local animation, weights, engines, the two services and the client.

Heavy imports (torch, the engines, FastAPI) happen inside the subcommands that need them, so the
gateway's slim image never imports torch.
"""

import argparse
import os
import sys
import tempfile
import typing
from pathlib import Path

from pydantic import ValidationError

from liveportrait.arguments import add_option_arguments, options_from_args, progress_bar

if typing.TYPE_CHECKING:
    from engines.pipeline import Animator

SYNTHETIC_WARNING = (
    "Synthetic weights: the model runs the real computation with random parameters, so the output "
    "pixels are meaningless. Use `liveportrait weights download DIR` (or your own copy of the official "
    "bundle) and --weights DIR for real results."
)


def _weights_dir(args: argparse.Namespace) -> Path:
    weights = args.weights or os.environ.get("LIVEPORTRAIT_WEIGHTS_DIR")
    if not weights:
        raise SystemExit(
            "no weights: pass --weights DIR or set LIVEPORTRAIT_WEIGHTS_DIR "
            "(`liveportrait weights download DIR` fetches the official bundle; "
            "`liveportrait weights synthetic DIR` writes a test bundle)"
        )
    return Path(weights)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _animator(args: argparse.Namespace) -> "Animator":
    from engines.acceleration.inference import resolve_precision
    from engines.pipeline import Animator

    device = _device(args.device)
    return Animator(
        _weights_dir(args),
        device,
        args.backend,
        args.frame_batch,
        args.detector,
        optimize=args.optimize,
        precision=resolve_precision(args.precision, device),
        pipelined=args.pipelined,
    )


# --- subcommands ------------------------------------------------------------------------------


def cmd_animate(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    animator = _animator(args)
    update, stop = progress_bar("animating")
    try:
        result = animator.animate(
            Path(args.source),
            Path(args.driving),
            Path(args.output),
            options,
            progress=update,
            trust_pickle=args.trust_pickle,
        )
    finally:
        stop()
    print(
        f"wrote {result.output} ({result.frames} frames, {result.width}x{result.height}, {result.fps:g} fps)"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from engines.demo import write_demo_inputs
    from engines.weights import write_synthetic_bundle

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="liveportrait-demo-"))
    source, driving = write_demo_inputs(work, n_frames=args.frames)
    print(f"demo inputs: {source} and {driving} ({args.frames} frames)")
    if not (args.weights or os.environ.get("LIVEPORTRAIT_WEIGHTS_DIR")):
        args.weights = str(write_synthetic_bundle(work / "weights", seed=0))
        print(SYNTHETIC_WARNING)
    args.source, args.driving, args.trust_pickle = str(source), str(driving), False
    return cmd_animate(args)


def cmd_motion_extract(args: argparse.Namespace) -> int:
    from engines.motion.template import save_template

    animator = _animator(args)
    template = animator.extract_motion(Path(args.driving), options_from_args(args))
    save_template(Path(args.output), template)
    print(f"wrote {args.output} ({template.exp.shape[0]} frames at {template.fps:g} fps)")
    return 0


def cmd_weights_synthetic(args: argparse.Namespace) -> int:
    from engines.weights import write_synthetic_bundle

    write_synthetic_bundle(Path(args.dir), args.seed)
    print(f"wrote synthetic weights (seed {args.seed}) under {args.dir}")
    print(SYNTHETIC_WARNING)
    return 0


def cmd_weights_check(args: argparse.Namespace) -> int:
    from engines.weights import WeightsError, check_bundle

    try:
        for line in check_bundle(Path(args.dir)):
            print(line)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    from engines.download import download_bundle

    download_bundle(Path(args.dir), args.repo, include_insightface=args.include_insightface)
    return 0


# --- parser -------------------------------------------------------------------------------------


def _engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="official-layout weights directory (env LIVEPORTRAIT_WEIGHTS_DIR)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        default="torch",
        help="auto: TensorRT on a CUDA device that has it, else torch",
    )
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch: run the rewritten F, W and G of engines.acceleration.inference (default: on)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="fp32",
        help="arithmetic of F, W and G (auto: fp16 on CUDA); reduced precision needs --optimize",
    )
    p.add_argument(
        "--pipelined",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode/crop and paste-back/encode in threads overlapping inference (default: on)",
    )
    p.add_argument("--frame-batch", type=int, default=8, help="driving frames per W+G batch")
    p.add_argument("--detector", choices=["auto", "insightface", "haar"], default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liveportrait", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("animate", help="animate a portrait locally (no Redis or S3 needed)")
    p.add_argument("source", help="source portrait: an image or a video")
    p.add_argument("driving", help="driving video, image, or motion template")
    p.add_argument("-o", "--output", required=True, help="output .mp4 (.png for a driving image)")
    p.add_argument(
        "--trust-pickle", action="store_true", help="accept an official .pkl motion template (runs pickle)"
    )
    _engine_arguments(p)
    add_option_arguments(p)
    p.set_defaults(func=cmd_animate)

    p = sub.add_parser("demo", help="animate the bundled portrait with a generated driving video")
    p.add_argument("-o", "--output", default="liveportrait-demo.mp4")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--work-dir", help="where to write the demo inputs (default: a temporary directory)")
    _engine_arguments(p)
    add_option_arguments(p)
    p.set_defaults(func=cmd_demo)

    motion = sub.add_parser("motion", help="motion templates").add_subparsers(
        dest="motion_command", required=True
    )
    p = motion.add_parser("extract", help="extract a driving video's motion into a safe template (.npz)")
    p.add_argument("driving")
    p.add_argument("-o", "--output", required=True)
    _engine_arguments(p)
    add_option_arguments(p)
    p.set_defaults(func=cmd_motion_extract)

    weights = sub.add_parser("weights", help="weight bundles").add_subparsers(
        dest="weights_command", required=True
    )
    p = weights.add_parser("synthetic", help="write a seeded synthetic bundle (tests; meaningless pixels)")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_weights_synthetic)
    p = weights.add_parser("check", help="check a bundle against the official manifest")
    p.add_argument("dir")
    p.set_defaults(func=cmd_weights_check)
    p = weights.add_parser(
        "download", help="download the official bundle from the model hub (needs internet)"
    )
    p.add_argument("dir")
    p.add_argument("--repo", default="KwaiVGI/LivePortrait")
    p.add_argument(
        "--include-insightface", action="store_true", help="also the non-commercial detector models"
    )
    p.set_defaults(func=cmd_weights_download)

    from liveportrait.cli_service import add_service_commands

    _add_engines_commands(sub)
    add_service_commands(sub)
    return parser


def _add_engines_commands(sub: argparse._SubParsersAction) -> None:
    """`engines export|build`; the slim gateway install has no torch, so there they only explain."""
    try:
        from liveportrait.cli_engines import add_engines_commands
    except ModuleNotFoundError as err:
        missing = err.name

        def unavailable(args: argparse.Namespace) -> int:
            print(f"error: `engines` needs the engines extra ({missing} is not installed)", file=sys.stderr)
            return 2

        sub.add_parser("engines", help=f"unavailable: {missing} is not installed").set_defaults(
            func=unavailable
        )
        return
    add_engines_commands(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as err:
        print(f"error: invalid options:\n{err}", file=sys.stderr)
        return 2
    except Exception as err:
        if hasattr(err, "code") and hasattr(err, "message"):
            print(f"error [{err.code}]: {err.message}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
