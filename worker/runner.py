"""What a worker does with one job: claim it, fetch inputs, animate, upload, report, clean up.

RQ calls `run_job(payload)` (the dotted path the gateway enqueues) inside an `AnimationWorker`,
which makes its `JobRunner` the active one for the duration of the job.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import ValidationError
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job as RQJob
from rq.timeouts import JobTimeoutException

from liveportrait.options import AnimationOptions
from service.contract import JobPayload
from service.media import SNIFF_BYTES, extension, sniff
from service.queue import JobQueue
from service.settings import Settings
from service.storage import Store
from worker.inputs import fetch_input

log = structlog.get_logger("worker")


class AnimationResult(Protocol):
    """What `Animator.animate` returns (the result's media type is sniffed from the file itself)."""

    output: Path
    frames: int
    fps: float


class Animator(Protocol):
    """The engine interface the worker drives (engines.pipeline.Animator)."""

    def animate(
        self,
        source: Path,
        driving: Path,
        output: Path,
        options: AnimationOptions,
        *,
        limits: Any = None,
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> AnimationResult:
        """Render `output`, reporting progress and stopping when `should_cancel()` turns true."""
        ...


@dataclass
class Engine:
    """A loaded animator, the exception types it raises on cancel, and the input limits to pass."""

    animator: Animator
    canceled: tuple[type[BaseException], ...]
    limits: Any = None


@dataclass
class JobRunner:
    """Runs jobs with one engine, loaded once per process."""

    settings: Settings
    queue: JobQueue
    store: Store
    engine: Engine
    worker_name: str = "worker"
    _work_root: Path = field(init=False)

    def __post_init__(self) -> None:
        root = self.settings.work_dir or Path(tempfile.gettempdir()) / "liveportrait-work"
        root.mkdir(parents=True, exist_ok=True)
        self._work_root = root

    def run(self, raw_payload: dict[str, Any], job_id: str, retries_left: int = 0) -> dict[str, Any]:
        """Run one job to a terminal state (or back to queued when RQ will retry it)."""
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            state = self.queue.claim(job_id, self.worker_name)
            if state != "running":
                log.info("job.skipped", status=state)
                if state == "canceled":
                    self.store.delete_prefix(f"inputs/{job_id}/")
                return {"status": state}
            log.info("job.started", retries_left=retries_left)
            work_dir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=self._work_root))
            terminal = True
            started = time.monotonic()
            try:
                return self._animate(job_id, raw_payload, work_dir)
            except self.engine.canceled:
                self.queue.mark_canceled(job_id)
                log.info("job.canceled", seconds=round(time.monotonic() - started, 3))
                return {"status": "canceled"}
            except JobTimeoutException:
                message = f"the job ran longer than {self.settings.job_timeout_s} s"
                self.queue.fail(job_id, "timeout", message)
                log.warning("job.failed", code="timeout")
                return {"status": "failed", "code": "timeout"}
            except Exception as exc:
                code, message = getattr(exc, "code", None), getattr(exc, "message", None)
                if isinstance(code, str) and isinstance(message, str):
                    self.queue.fail(job_id, code, message)
                    log.info("job.failed", code=code, message=message)
                    return {"status": "failed", "code": code}
                if retries_left > 0:
                    terminal = not self.queue.requeue(job_id)
                    log.exception("job.error_will_retry", retries_left=retries_left)
                else:
                    self.queue.fail(
                        job_id, "internal_error", f"unexpected {type(exc).__name__} in the worker"
                    )
                    log.exception("job.failed", code="internal_error")
                raise
            finally:
                shutil.rmtree(work_dir, ignore_errors=True)
                if terminal:
                    self.store.delete_prefix(f"inputs/{job_id}/")

    def _animate(self, job_id: str, raw_payload: dict[str, Any], work_dir: Path) -> dict[str, Any]:
        try:
            payload = JobPayload.model_validate(raw_payload)
        except ValidationError as exc:
            self.queue.fail(
                job_id, "invalid_payload", f"the queued job is malformed: {exc.error_count()} errors"
            )
            log.error("job.failed", code="invalid_payload")
            return {"status": "failed", "code": "invalid_payload"}
        source = fetch_input(payload.source, work_dir, "source", store=self.store, settings=self.settings)
        driving = fetch_input(payload.driving, work_dir, "driving", store=self.store, settings=self.settings)
        log.info("job.inputs_ready", source_bytes=source.stat().st_size, driving_bytes=driving.stat().st_size)

        def progress(frames_done: int, frames_total: int) -> None:
            self.queue.progress(job_id, frames_done, frames_total)

        def should_cancel() -> bool:
            return self.queue.cancel_requested(job_id)

        started = time.monotonic()
        result = self.engine.animator.animate(
            source,
            driving,
            work_dir / "output.mp4",
            payload.options,
            limits=self.engine.limits,
            progress=progress,
            should_cancel=should_cancel,
        )
        output = Path(result.output)
        with output.open("rb") as produced:
            content_type = sniff(produced.read(SNIFF_BYTES)) or "application/octet-stream"
        key = f"results/{job_id}/output{extension(content_type) or output.suffix}"
        self.store.put(key, output, content_type=content_type)
        size = output.stat().st_size
        if not self.queue.succeed(
            job_id,
            result_key=key,
            content_type=content_type,
            frames=int(result.frames),
            fps=float(result.fps),
            size_bytes=size,
        ):
            log.warning("job.vanished_before_success")
            self.store.delete(key)
            return {"status": "missing"}
        log.info(
            "job.succeeded",
            frames=int(result.frames),
            fps=float(result.fps),
            bytes=size,
            seconds=round(time.monotonic() - started, 3),
        )
        return {"status": "succeeded", "result_key": key, "frames": int(result.frames)}


_active: ContextVar[JobRunner | None] = ContextVar("liveportrait_active_runner", default=None)
_registered: list[JobRunner] = []


def activate(runner: JobRunner) -> Any:
    """Make `runner` run the jobs of this thread (returns the token for `deactivate`)."""
    return _active.set(runner)


def deactivate(token: Any) -> None:
    """Undo `activate`."""
    _active.reset(token)


def register(runner: JobRunner) -> None:
    """Remember the runner of a started worker, for RQ callbacks that run outside a job."""
    _registered.append(runner)


def unregister(runner: JobRunner) -> None:
    """Forget a runner registered with `register`."""
    if runner in _registered:
        _registered.remove(runner)


def run_job(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ's entry point for a job; its one argument is the JobPayload as a JSON dict."""
    runner = _active.get()
    job = get_current_job()
    if runner is None or job is None:
        raise RuntimeError("run_job runs inside an AnimationWorker")
    return runner.run(payload, job.id, retries_left=job.retries_left or 0)


def on_job_failure(
    job: RQJob, connection: Any, exc_type: type | None, exc: BaseException | None, tb: Any
) -> None:
    """RQ failure callback: settle jobs the runner could not (abandoned by a dead worker, hard stops).

    A job still marked running is put back to queued when RQ will retry it, else failed with
    code worker_lost (abandoned), timeout, or internal_error.
    """
    runner = _active.get() or (_registered[-1] if _registered else None)
    if runner is None:
        return
    record = runner.queue.get(job.id)
    if record is None or record.status != "running":
        return
    if job.retries_left:
        runner.queue.requeue(job.id)
        return
    if isinstance(exc, AbandonedJobError) or exc_type is AbandonedJobError:
        runner.queue.fail(job.id, "worker_lost", "the worker running this job stopped responding")
    elif isinstance(exc, JobTimeoutException):
        runner.queue.fail(job.id, "timeout", f"the job ran longer than {runner.settings.job_timeout_s} s")
    else:
        runner.queue.fail(job.id, "internal_error", "the job stopped unexpectedly")
    runner.store.delete_prefix(f"inputs/{job.id}/")
