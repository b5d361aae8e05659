"""Command-line arguments shared by the local and the service commands: animation options, progress."""

import argparse
import typing
from collections.abc import Callable

from common.expression import ExpressionControls
from common.options import AnimationOptions, FaceSelection
from common.progress import ProgressCallback, ProgressEvent


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per AnimationOptions field (`--flag-stitching/--no-flag-stitching`, `--scale 2.3`, ...)."""
    group = parser.add_argument_group("animation options (official defaults)")
    for name, field in AnimationOptions.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or ''} (default: {field.default})".strip()
        annotation = field.annotation
        if annotation is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif annotation == FaceSelection:  # parsed by AnimationOptions: largest, all or 0,2
            group.add_argument(flag, dest=name, metavar="largest|all|INDEX,...", default=None, help=help_text)
        elif typing.get_origin(annotation) is typing.Literal:
            group.add_argument(
                flag, dest=name, choices=typing.get_args(annotation), default=None, help=help_text
            )
        else:
            kind = int if annotation is int else float
            group.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def options_from_args(args: argparse.Namespace) -> AnimationOptions:
    given = {k: getattr(args, k) for k in AnimationOptions.model_fields if getattr(args, k, None) is not None}
    return AnimationOptions(**given)


def progress_bar(description: str) -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress bar of a local job: the phase it is in and that phase's frames (common.progress)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    )
    task = bar.add_task(description, total=None)
    bar.start()

    def update(event: ProgressEvent) -> None:
        phase = event.phase.replace("_", " ")
        bar.update(task, description=f"{description}: {phase}", completed=event.done, total=event.total)

    return update, bar.stop


def add_expression_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per expression control (`--smile 0.8`, `--yaw 10`, `--eyeball-direction-x -5`, ...) and
    `--expression JSON` (the same controls as one JSON object; the flags override it)."""
    group = parser.add_argument_group("expression controls (rest: 0, mov_z 1, ratios the source's own)")
    group.add_argument(
        "--expression",
        "--expression-json",
        dest="expression_json",
        metavar="JSON",
        help="the controls as a JSON object, e.g. '{\"smile\": 0.5}'",
    )
    for name, field in ExpressionControls.model_fields.items():
        group.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=float, default=None, help=field.description
        )


def expression_from_args(args: argparse.Namespace) -> ExpressionControls | None:
    """The controls given as flags or JSON (None when there are none)."""
    text = getattr(args, "expression_json", None)
    given: dict[str, float | None] = {}
    if text:
        given = ExpressionControls.model_validate_json(text).model_dump(exclude_unset=True)
    given.update(
        {k: getattr(args, k) for k in ExpressionControls.model_fields if getattr(args, k, None) is not None}
    )
    return ExpressionControls(**given) if given or text else None
