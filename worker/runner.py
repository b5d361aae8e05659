"""What a worker does with one job: claim it, fetch inputs, animate, upload, report, clean up.

RQ calls `run_job(payload)` (the dotted path the gateway enqueues) inside an `AnimationWorker`,
which makes its `JobRunner` the active one for the duration of the job.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis
import structlog
from pydantic import ValidationError
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job as RQJob
from rq.timeouts import JobTimeoutException

from common.errors import Canceled, ErrorCode, LivePortraitError
from common.media import MOTION_TEMPLATE, SNIFF_BYTES, extension, sniff
from common.options import AnimationOptions
from common.progress import PREPARING, ProgressEvent
from engines.media import Limits
from engines.media.credentials import ContentSigner, load_signer
from engines.request import AnimateRequest
from service import metrics, tracing
from service.contract import JobPayload
from service.queue import JobQueue, PhaseProgress
from service.settings import Settings
from service.storage import StorageError, Store, put_with_retries
from worker.inputs import fetch_input
from worker.motion import MotionCache, MotionExtractor, cached_motion, make_template
from worker.progress import AttemptProgress, PhaseCosts
from worker.workarea import WorkArea

log = structlog.get_logger("worker")

SUPERSEDED = "superseded"
"""What `JobRunner.run` returns for an attempt that a newer attempt of the same job replaced."""


class AnimationResult(Protocol):
    """What `Animator.animate` returns (the result's media type is sniffed from the file itself)."""

    output: Path
    frames: int
    fps: float


class Animator(Protocol):
    """The engine interface the worker drives (engines.pipeline.Animator)."""

    def animate(self, request: AnimateRequest) -> AnimationResult:
        """Render `request.output`, reporting progress and stopping when `should_cancel()` turns true."""
        ...


class Editor(Protocol):
    """The engine interface of jobs without a driving input (engines.editor.Editor)."""

    def edit(
        self,
        source: Path,
        output: Path,
        options: AnimationOptions,
        *,
        expression: Any = None,
        keyframes: Any = None,
        limits: Any = None,
        progress: Any = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> AnimationResult:
        """A still (expression) or a keyframe video, like `Animator.animate`."""
        ...


@dataclass
class WorkerEngine:
    """A loaded animator (and expression editor) and the input limits to pass them (they raise
    common.errors.Canceled on cancel)."""

    animator: Animator
    limits: Limits = field(default_factory=Limits)
    editor: Editor | None = None
    motion: MotionExtractor | None = None
    identity: str = ""
    """The engine's load config (JSON): what its motion templates are cached under (worker.motion)."""


@dataclass
class JobRunner:
    """Runs jobs with one engine, loaded once per process."""

    settings: Settings
    queue: JobQueue
    store: Store
    engine: WorkerEngine
    worker_name: str = "worker"
    _work_area: WorkArea = field(init=False)
    _costs: PhaseCosts = field(init=False, default_factory=PhaseCosts)
    _active: tuple[str, int, AttemptProgress] | None = field(init=False, default=None)
    _signer: ContentSigner = field(init=False)
    _motion_cache: MotionCache = field(init=False)

    def __post_init__(self) -> None:
        root = self.settings.work_dir or Path(tempfile.gettempdir()) / "liveportrait-work"
        self._work_area = WorkArea(root)  # and the work folders of dead workers' attempts go
        self._signer = load_signer(self.settings.credentials_config())  # a bad certificate stops the start
        if self._signer.development:
            log.warning("credentials.development", folder=str(self._signer.development))
        settings = self.settings
        self._motion_cache = MotionCache(
            self.store,
            self.queue.redis,
            settings.queue_prefix,
            settings.motion_cache_ttl_s,
            self.engine.identity,
        )

    def run(self, raw_payload: dict[str, Any], job_id: str, retries_left: int = 0) -> dict[str, Any]:
        """Run one attempt of a job to a terminal state, or back to queued when RQ will retry it.

        Every transition is fenced by the attempt number: an attempt that a newer one superseded
        (its worker was taken for dead) stops at its next cancel check and changes nothing.
        """
        trace = tracing.job_log_fields(raw_payload.get("traceparent"))
        with structlog.contextvars.bound_contextvars(job_id=job_id, **trace):
            state, attempt = self.queue.claim_attempt(job_id, self.worker_name)
            if state != "running":
                log.info("job.skipped", status=state)
                if state == "canceled":
                    self.drop_inputs(job_id)
                return {"status": state}
            log.info("job.started", attempt=attempt, retries_left=retries_left)
            progress = AttemptProgress(self._costs, functools.partial(self._report, job_id, attempt))
            progress(ProgressEvent(PREPARING))
            self._active = (job_id, attempt, progress)
            work_dir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=self._work_area.path))
            settled = False
            started = time.monotonic()
            try:
                outcome = self._animate(job_id, attempt, raw_payload, work_dir, progress)
                settled = outcome["status"] != SUPERSEDED
                return outcome
            except Canceled:
                settled = self.queue.mark_canceled(job_id, attempt=attempt)
                log.info(
                    "job.canceled" if settled else "job.superseded",
                    seconds=round(time.monotonic() - started, 3),
                )
                return {"status": "canceled" if settled else SUPERSEDED}
            except JobTimeoutException:
                message = f"the job ran longer than {self.settings.job_timeout_s} s"
                settled = self.queue.fail(job_id, "timeout", message, attempt=attempt)
                log.warning("job.failed" if settled else "job.superseded", code="timeout")
                return {"status": "failed" if settled else SUPERSEDED, "code": "timeout"}
            except LivePortraitError as exc:
                settled = self.queue.fail(job_id, exc.code, exc.message, attempt=attempt)
                log.info("job.failed" if settled else "job.superseded", code=exc.code, message=exc.message)
                return {"status": "failed" if settled else SUPERSEDED, "code": exc.code}
            except Exception as exc:
                if retries_left > 0:
                    message = f"unexpected {type(exc).__name__} in the worker"
                    if not self.queue.requeue(job_id, "internal_error", message, attempt=attempt):
                        log.warning("job.superseded", error=type(exc).__name__)
                        return {"status": SUPERSEDED}
                    log.exception("job.error_will_retry", retries_left=retries_left)
                else:
                    message = f"unexpected {type(exc).__name__} in the worker"
                    settled = self.queue.fail(job_id, "internal_error", message, attempt=attempt)
                    if not settled:
                        log.warning("job.superseded", error=type(exc).__name__)
                        return {"status": SUPERSEDED}
                    log.exception("job.failed", code="internal_error")
                raise
            finally:
                self._active = None
                shutil.rmtree(work_dir, ignore_errors=True)
                if settled:
                    self.drop_inputs(job_id)

    def heartbeat(self) -> None:
        """The running attempt is alive (the worker's heartbeat thread calls this every beat): its
        progress held back by the rate limit is reported, which beats too, or else a bare beat."""
        active = self._active
        if active is None:
            return
        job_id, attempt, progress = active
        if progress.flush():
            return
        try:
            self.queue.heartbeat(job_id, attempt=attempt)
        except redis.exceptions.RedisError as exc:
            log.warning("job.heartbeat_not_recorded", error=str(exc))

    def close(self) -> None:
        """Remove this worker's work folder (a warm shutdown)."""
        self._work_area.close()

    def _report(
        self, job_id: str, attempt: int, frames_done: int, frames_total: int | None, phase: PhaseProgress
    ) -> None:
        try:
            self.queue.progress(job_id, frames_done, frames_total, attempt=attempt, phase=phase)
        except redis.exceptions.RedisError as exc:  # a Redis outage must not stop the render
            log.warning("job.progress_not_recorded", error=str(exc))

    def drop_inputs(self, job_id: str) -> None:
        """Delete the job's stored inputs; an unreachable store leaves them to expire."""
        try:
            self.store.delete_prefix(f"inputs/{job_id}/")
        except StorageError as exc:
            log.warning("job.inputs_not_deleted", error=str(exc))

    def _animate(
        self,
        job_id: str,
        attempt: int,
        raw_payload: dict[str, Any],
        work_dir: Path,
        progress: AttemptProgress,
    ) -> dict[str, Any]:
        try:
            payload = JobPayload.model_validate(raw_payload)
        except ValidationError as exc:
            message = f"the queued job is malformed: {exc.error_count()} errors"
            if not self.queue.fail(job_id, "invalid_payload", message, attempt=attempt):
                return {"status": SUPERSEDED}
            log.error("job.failed", code="invalid_payload")
            return {"status": "failed", "code": "invalid_payload"}
        given = (("source", payload.source), ("driving", payload.driving))
        inputs = {
            name: fetch_input(location, work_dir, name, store=self.store, settings=self.settings)
            for name, location in given
            if location is not None
        }
        sizes = {f"{name}_bytes": path.stat().st_size for name, path in inputs.items()}
        log.info("job.inputs_ready", **sizes)

        def should_cancel() -> bool:
            try:
                return self.queue.cancel_requested(job_id, attempt=attempt)
            except redis.exceptions.RedisError as exc:
                log.warning("job.cancel_check_failed", error=str(exc))
                return False

        started = time.monotonic()
        motion_job = payload.output.kind == "motion"
        result: AnimationResult
        if motion_job:
            result = make_template(
                self.engine.motion,
                self._motion_cache,
                inputs["driving"],
                payload.options,
                work_dir,
                limits=self.engine.limits,
                progress=progress,
                should_cancel=should_cancel,
            )
        elif "driving" not in inputs:
            if self.engine.editor is None:
                raise LivePortraitError("unsupported_input", "this worker runs no expression edits")
            result = self.engine.editor.edit(
                inputs["source"],
                work_dir / "output.mp4",
                payload.options,
                expression=payload.expression,
                keyframes=payload.keyframes,
                limits=self.engine.limits,
                progress=progress,
                should_cancel=should_cancel,
            )
        else:
            request = AnimateRequest(
                inputs["source"],
                inputs["driving"],
                work_dir / "output.mp4",
                payload.options,
                limits=self.engine.limits,
                progress=progress,
                should_cancel=should_cancel,
                expression=payload.expression,
                motion=cached_motion(self._motion_cache, inputs["driving"], payload.options, work_dir),
            )
            result = self.engine.animator.animate(request)
        try:  # a Redis blip here must not turn a finished render into a retry
            metrics.record_render(
                self.queue.redis,
                self.queue.metrics_key,
                self.worker_name,
                frames=int(result.frames),
                seconds=time.monotonic() - started,
                gpu_memory_bytes=metrics.cuda_peak_memory_bytes(),
            )
        except redis.RedisError as exc:
            log.warning("metrics.record_failed", error=str(exc))
        output = Path(result.output)
        if motion_job:  # a template is no picture: content credentials label media
            content_type = MOTION_TEMPLATE
        else:
            self._signer.sign(output, job_id=job_id, inputs=inputs)
            with output.open("rb") as produced:
                content_type = sniff(produced.read(SNIFF_BYTES)) or "application/octet-stream"
        key = f"results/{job_id}/{attempt}/output{extension(content_type) or output.suffix}"
        window = self.settings.storage_retry_window_s
        put_with_retries(self.store, key, output, content_type=content_type, window_s=window)
        size = output.stat().st_size
        progress.finish()  # its phases' measured times weigh the next attempts' phases
        if not self.queue.succeed(
            job_id,
            result_key=key,
            content_type=content_type,
            frames=int(result.frames),
            fps=float(result.fps),
            size_bytes=size,
            content_credentials=not motion_job,
            attempt=attempt,
        ):
            log.warning("job.superseded_before_success")
            try:
                self.store.delete(key)
            except StorageError as exc:
                log.warning("job.result_not_deleted", key=key, error=str(exc))
            return {"status": SUPERSEDED}
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

    A job still marked running is put back to queued when RQ will retry it (at-least-once: an
    abandoned attempt is run again, up to `job_retries` times), else failed with code worker_lost
    (abandoned), timeout, or internal_error.
    """
    runner = _active.get() or (_registered[-1] if _registered else None)
    if runner is None:
        return
    record = runner.queue.get(job.id)
    if record is None or record.status != "running":
        return
    abandoned = isinstance(exc, AbandonedJobError) or exc_type is AbandonedJobError
    code: ErrorCode = "internal_error"
    message = "the job stopped unexpectedly"
    if abandoned:
        code, message = "worker_lost", "the worker running this job stopped responding"
    elif isinstance(exc, JobTimeoutException):
        code, message = "timeout", f"the job ran longer than {runner.settings.job_timeout_s} s"
    if job.retries_left:
        if runner.queue.requeue(job.id, code, message, attempt=record.attempts):
            log.warning("job.requeued", job_id=job.id, attempt=record.attempts, abandoned=abandoned)
        return
    settled = runner.queue.fail(job.id, code, message, attempt=record.attempts)
    if settled:
        runner.drop_inputs(job.id)
