"""Command-line arguments shared by the local and the service commands: animation options, progress."""

import argparse
import typing
from collections.abc import Callable

from common.options import AnimationOptions


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


def progress_bar(description: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    )
    task = bar.add_task(description, total=None)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar.stop
