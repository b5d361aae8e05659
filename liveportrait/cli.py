"""The `liveportrait` command: local animation, weights, engines, the two services and the client.

Heavy imports (torch, the engines, FastAPI) happen inside the subcommands that need them, so the
gateway's slim image never imports torch.
"""

import argparse
import os
import sys
import tempfile
import traceback
import typing
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from common.engine_config import Backend, Detector, EngineConfig, PrecisionName
from common.expression import ExpressionControls
from liveportrait.arguments import (
    add_expression_arguments,
    add_option_arguments,
    expression_from_args,
    options_from_args,
    progress_bar,
)
from liveportrait.failures import EXIT_FAILED, Failure, describe

if typing.TYPE_CHECKING:
    from engines.media.credentials import ContentSigner
    from engines.pipeline import Animator

ENGINE_FLAGS = (
    "device",
    "backend",
    "optimize",
    "precision",
    "pipelined",
    "frame_batch",
    "detector",
    "engine_cache_dir",
)
"""EngineConfig fields that a local command takes as flags (each falls back to its setting)."""

SYNTHETIC_WARNING = (
    "Synthetic weights: the model runs the real computation with random parameters, so the output "
    "pixels are meaningless. Use `liveportrait weights download DIR` (or your own copy of the official "
    "bundle) and --weights DIR for real results."
)


def engine_config(args: argparse.Namespace) -> "EngineConfig":
    """The engine config of a local command: LIVEPORTRAIT_* settings, overridden by the flags given."""
    from service.settings import Settings

    given = {name: getattr(args, name) for name in ENGINE_FLAGS if getattr(args, name, None) is not None}
    if args.weights:
        given["weights_dir"] = args.weights
    try:
        return Settings(**given).engine_config()
    except ValueError as err:
        raise SystemExit(
            f"{err}; or pass --weights DIR (`liveportrait weights synthetic DIR` writes a test bundle)"
        ) from err


def _signer() -> "ContentSigner":
    """The outputs' signer (LIVEPORTRAIT_C2PA_* settings); says so when it made development credentials."""
    from engines.media.credentials import load_signer
    from service.settings import Settings

    signer = load_signer(Settings().credentials_config())
    if signer.generated:
        print(
            f"Content credentials: no signing certificate is configured (LIVEPORTRAIT_C2PA_CERT_CHAIN and "
            f"LIVEPORTRAIT_C2PA_PRIVATE_KEY), so a local development CA was made in {signer.development}. "
            "Outputs are labelled as AI-generated, but their signer is untrusted (see docs/credentials.md).",
            file=sys.stderr,
        )
    return signer


def _animator(args: argparse.Namespace) -> "Animator":
    from engines.engine import load_engine
    from engines.pipeline import Animator

    return Animator(load_engine(engine_config(args)))


# --- subcommands ------------------------------------------------------------------------------


def cmd_animate(args: argparse.Namespace) -> int:
    from engines.request import AnimateRequest

    options = options_from_args(args)
    signer = _signer()
    animator = _animator(args)
    update, stop = progress_bar("animating")
    try:
        request = AnimateRequest(
            Path(args.source),
            Path(args.driving),
            Path(args.output),
            options,
            progress=update,
            trust_pickle=args.trust_pickle,
            expression=expression_from_args(args),
        )
        result = animator.animate(request)
    finally:
        stop()
    inputs = {"source": Path(args.source), "driving": Path(args.driving)}
    signer.sign(Path(result.output), job_id=uuid.uuid4().hex, inputs=inputs)
    print(
        f"wrote {result.output} ({result.frames} frames, {result.width}x{result.height}, {result.fps:g} fps; "
        f"content credentials signed by {signer.subject})"
    )
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from common.expression import KEYFRAMES, check_edit_shape
    from engines.editor import Editor
    from engines.engine import load_engine

    options = options_from_args(args)
    expression = expression_from_args(args)
    keyframes = KEYFRAMES.validate_json(Path(args.keyframes).read_bytes()) if args.keyframes else None
    if expression is None and keyframes is None:
        expression = ExpressionControls()  # no control given: the panel at rest
    try:
        check_edit_shape(False, expression, keyframes)
    except ValueError as err:
        raise SystemExit(f"error: {err} (the control flags make a still; --keyframes FILE a video)") from err
    signer = _signer()
    editor = Editor(load_engine(engine_config(args)))
    update, stop = progress_bar("editing")
    try:
        result = editor.edit(
            Path(args.source),
            Path(args.output),
            options,
            expression=expression,
            keyframes=keyframes,
            progress=update,
        )
    finally:
        stop()
    signer.sign(Path(result.output), job_id=uuid.uuid4().hex, inputs={"source": Path(args.source)})
    print(
        f"wrote {result.output} ({result.frames} frames, {result.width}x{result.height}; "
        f"content credentials signed by {signer.subject})"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from engines.media.credentials import read_credentials

    found = read_credentials(Path(args.file), Path(args.trust) if args.trust else None)
    if found is None:
        print(f"{args.file}: no content credentials")
        return 1
    maker = f"{found.generator} {found.version}" if found.generator else "an unnamed generator"
    print(f"{args.file}: content credentials of {maker}" + ("" if found.ours else " (not ours)"))
    print(f"  digital source type: {found.source_type or 'none'}")
    print(f"  job: {found.job_id or 'none'}")
    print(f"  validation: {found.state}" + (f" ({', '.join(found.problems)})" if found.problems else ""))
    print(f"  signed by: {found.signer} (issuer {found.issuer})")
    for role, digest in found.inputs.items():
        print(f"  input {role}: sha256 {digest}")
    return 0 if found.ours and found.state in ("Valid", "Trusted") else 1


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
        for line in check_bundle(Path(args.dir), args.detector):
            print(line)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    from engines.download import download_bundle

    download_bundle(Path(args.dir), args.repo, include_insightface=args.include_insightface)
    if args.include_blazeface:
        from engines.download import download_blazeface

        download_blazeface(Path(args.dir))
    return 0


# --- parser -------------------------------------------------------------------------------------


def _engine_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the engine config; each defaults to its LIVEPORTRAIT_* setting (see docs/deploy.md)."""
    p.add_argument("--weights", help="official-layout weights directory (env LIVEPORTRAIT_WEIGHTS_DIR)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backend", choices=list(get_args(Backend)))
    p.add_argument("--optimize", action=argparse.BooleanOptionalAction)
    p.add_argument("--precision", choices=list(get_args(PrecisionName)))
    p.add_argument("--pipelined", action=argparse.BooleanOptionalAction)
    p.add_argument("--frame-batch", type=int)
    p.add_argument("--detector", choices=list(get_args(Detector)))
    p.add_argument("--engine-cache-dir")
    for action in p._actions:
        name = action.dest
        if name in EngineConfig.model_fields:
            field = EngineConfig.model_fields[name]
            action.help = f"{field.description} (default: {field.default})"


def _engine_command(
    commands: argparse._SubParsersAction, name: str, help: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """A subcommand that runs the engine: the engine's flags and the animation options, then its own."""
    p = commands.add_parser(name, help=help)
    _engine_arguments(p)
    add_option_arguments(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liveportrait",
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 done, 1 failed, 2 usage, 3 input refused, 4 not found, 5 auth, "
        "6 service unavailable.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _engine_command(sub, "animate", "animate a portrait locally (no Redis or S3 needed)", cmd_animate)
    p.add_argument("source", help="source portrait: an image or a video")
    p.add_argument("driving", help="driving video, image, or motion template")
    p.add_argument("-o", "--output", required=True, help="output .mp4 (.png for a driving image)")
    p.add_argument(
        "--trust-pickle", action="store_true", help="accept an official .pkl motion template (runs pickle)"
    )
    add_expression_arguments(p)

    p = _engine_command(
        sub, "edit", "edit a portrait's expression: a still, or a video from keyframes", cmd_edit
    )
    p.add_argument("source", help="source portrait image")
    p.add_argument("-o", "--output", required=True, help="output .png or .jpg (a still), .mp4 (keyframes)")
    p.add_argument(
        "--keyframes",
        metavar="FILE.json",
        help='a JSON list of {"expression": {...}, "change": n, "keep": m}: a video of n + m + ... frames',
    )
    add_expression_arguments(p)

    p = sub.add_parser("verify", help="read a file's content credentials (C2PA) and check their signature")
    p.add_argument("file")
    p.add_argument("--trust", help="PEM file of CA certificates to trust (e.g. the development CA's ca.pem)")
    p.set_defaults(func=cmd_verify)

    p = _engine_command(sub, "demo", "animate the bundled portrait with a generated driving video", cmd_demo)
    p.add_argument("-o", "--output", default="liveportrait-demo.mp4")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--work-dir", help="where to write the demo inputs (default: a temporary directory)")

    motion = _command_group(sub, "motion", "motion templates")
    p = _engine_command(
        motion, "extract", "extract a driving video's motion into a safe template (.npz)", cmd_motion_extract
    )
    p.add_argument("driving")
    p.add_argument("-o", "--output", required=True)

    weights = _command_group(sub, "weights", "weight bundles")
    p = weights.add_parser("synthetic", help="write a seeded synthetic bundle (tests; meaningless pixels)")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_weights_synthetic)
    p = weights.add_parser("check", help="check a bundle against the official manifest")
    p.add_argument("dir")
    p.add_argument(
        "--detector", choices=list(get_args(Detector)), default="auto", help="the face stack to report"
    )
    p.set_defaults(func=cmd_weights_check)
    p = weights.add_parser(
        "download", help="download the official bundle from the model hub (needs internet)"
    )
    p.add_argument("dir")
    p.add_argument("--repo", default="KwaiVGI/LivePortrait")
    p.add_argument(
        "--include-insightface",
        action="store_true",
        help="also the InsightFace detector models (non-commercial research only; docs/models.md)",
    )
    p.add_argument(
        "--include-blazeface",
        action="store_true",
        help="also MediaPipe's BlazeFace (Apache-2.0), from the mediapipe wheel (pip; docs/models.md)",
    )
    p.set_defaults(func=cmd_weights_download)

    from liveportrait.cli_service import add_service_commands

    _add_engines_commands(sub)
    add_service_commands(sub)
    return parser


def _command_group(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    """A command of subcommands (`liveportrait NAME SUBCOMMAND`), one of which is required."""
    return sub.add_parser(name, help=help_text).add_subparsers(dest=f"{name}_command", required=True)


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
    """Run one command; a failure is one line `error [code]: ...; what to do` and the exit status of its
    class (liveportrait.failures); `--verbose` adds the traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("error [canceled]: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        failure = describe(err, url=getattr(args, "url", None))
        if args.verbose:
            traceback.print_exc()
        if failure is None:
            detail = f"unexpected {type(err).__name__}: {err}"
            failure = Failure("internal_error", detail, EXIT_FAILED, "rerun with --verbose for the traceback")
        print(failure.line(), file=sys.stderr)
        return failure.exit_status


if __name__ == "__main__":
    sys.exit(main())
