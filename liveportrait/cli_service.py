"""`liveportrait gateway|worker|webhooks|submit|status|wait|download`: the services and the REST client.

Only the service package is imported here; the worker imports the engines (and torch) itself.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from liveportrait.arguments import add_option_arguments, options_from_args
from liveportrait.cli_live import add_live_command
from liveportrait.failures import job_failure

if TYPE_CHECKING:
    from service.client import Client
    from service.contract import Job

DEFAULT_URL = "http://127.0.0.1:8000"


def cmd_gateway(args: argparse.Namespace) -> int:
    from service.gateway.app import serve
    from service.settings import get_settings

    serve(get_settings())
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from service.gateway.services.jobs import job_view
    from service.logs import configure_logging
    from service.settings import get_settings
    from service.webhooks import serve

    settings = get_settings()
    configure_logging(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, job_view))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from worker.worker import main as worker_main

    worker_main(get_settings())
    return 0


def _client(args: argparse.Namespace) -> "Client":
    from service.client import Client

    return Client(args.url, args.api_key)


def _print_job(job: "Job") -> None:
    print(json.dumps(job.model_dump(mode="json"), indent=2))


def cmd_submit(args: argparse.Namespace) -> int:
    if (args.driving is None) != args.motion:
        raise SystemExit("error: give SOURCE DRIVING, or --motion DRIVING (see `liveportrait submit --help`)")
    source, driving = (None, args.source) if args.motion else (args.source, args.driving)
    with _client(args) as client:
        job = client.submit(
            source,
            driving,
            options=options_from_args(args),
            priority=args.priority,
            idempotency_key=args.idempotency_key,
            direct_upload=args.direct_upload,
            output_kind="motion" if args.motion else "animation",
        )
        print(job.id)
        if args.wait:
            return _wait(client, job.id, args.output)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_job(client.status(args.job_id))
    return 0


def _job_bar(job_id: str) -> tuple[Callable[["Job"], None], Callable[[], None]]:
    """A progress bar of a job: its phase (or status), the share done, the phase's frames and the ETA."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    task = bar.add_task(f"job {job_id}", total=1.0, detail="")
    bar.start()

    def update(job: "Job") -> None:
        p = job.progress
        state = "stalled" if job.stalled else (p.phase or job.status).replace("_", " ")
        frames = f"{p.phase_done}/{p.phase_total} frames" if p.phase_total else ""
        eta = f"ETA {p.eta_s:.0f} s" if p.eta_s is not None else ""
        detail = "  ".join(part for part in (frames, eta) if part)
        bar.update(task, completed=p.fraction, description=f"job {job_id} {state}", detail=detail)

    return update, bar.stop


def _wait(client: "Client", job_id: str, output: str | None) -> int:
    update, stop = _job_bar(job_id)
    try:
        job = client.wait(job_id, on_progress=update)
    finally:
        stop()
    if job.status != "succeeded":
        failure = job_failure(job_id, job.status, job.error)
        print(failure.line(), file=sys.stderr)
        return failure.exit_status
    if output:
        print(f"wrote {client.download(job_id, output)}")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _wait(client, args.job_id, args.output)


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(f"wrote {client.download(args.job_id, Path(args.output))}")
    return 0


def _client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("LIVEPORTRAIT_URL", DEFAULT_URL), help="gateway base URL")
    p.add_argument(
        "--api-key", default=os.environ.get("LIVEPORTRAIT_API_KEY"), help="API key (env LIVEPORTRAIT_API_KEY)"
    )


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    """Register the service and client subcommands on the `liveportrait` parser."""
    sub.add_parser(
        "gateway", help="run the REST gateway (settings from LIVEPORTRAIT_* variables)"
    ).set_defaults(func=cmd_gateway)
    sub.add_parser("worker", help="run a queue worker (one process per GPU)").set_defaults(func=cmd_worker)
    sub.add_parser(
        "webhooks", help="run a webhook dispatcher (for gateways with LIVEPORTRAIT_WEBHOOK_DISPATCHER=false)"
    ).set_defaults(func=cmd_webhooks)

    p = sub.add_parser("submit", help="submit a job to a gateway")
    p.add_argument("source", help="file path or http(s)/s3 URL (with --motion: the driving video)")
    p.add_argument(
        "driving", nargs="?", help="file path or http(s)/s3 URL: a video, an image or a motion template"
    )
    p.add_argument(
        "--motion",
        action="store_true",
        help="make the motion template (.npz) of one driving video, to drive later jobs with",
    )
    p.add_argument("--priority", choices=["high", "default", "low"], default="default")
    p.add_argument("--idempotency-key")
    p.add_argument("--direct-upload", action="store_true", help="upload files via presigned POST first")
    p.add_argument("--wait", action="store_true", help="wait with a progress bar, then download to -o")
    p.add_argument("-o", "--output", help="where to save the result (with --wait)")
    _client_arguments(p)
    add_option_arguments(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show a job")
    p.add_argument("job_id")
    _client_arguments(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("wait", help="wait for a job with a progress bar")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", help="download the result here when it succeeds")
    _client_arguments(p)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("download", help="download a job's result")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", required=True)
    _client_arguments(p)
    p.set_defaults(func=cmd_download)

    add_live_command(sub, _client_arguments)
