"""The RQ worker process: one per GPU, engines loaded once, jobs run in-process (no fork).

`main(settings)` is what `liveportrait worker` runs. `AnimationWorker` is RQ's `SimpleWorker`
with the JSON serializer plus: a heartbeat thread while a job runs (so a long job is never taken
for abandoned), a scheduler thread that enqueues delayed retries (RQ's own scheduler would fork)
and, every `reaper_interval_s`, reaps abandoned jobs (no heartbeat for `job_abandoned_after_s`:
re-queued while retries are left, else failed worker_lost) even while this worker is busy, warm
shutdown on SIGTERM (the current job finishes; a second signal stops at once), `stop()` for
embedding in a thread, and a work loop that waits out a Redis outage instead of exiting. Each
heartbeat also marks the running attempt alive on its job (`JobRunner.heartbeat`), which clears or
prevents the job's `stalled` flag; the worker's work folder goes at a warm shutdown, and the folders
of dead workers when the next one starts (worker.workarea). With `live_slots` > 0, `main` also runs
the live server (worker.live) beside the job loop, on the same engine.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis
import structlog
from rq import SimpleWorker
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.utils import now, utcparse
from rq.worker import WorkerStatus

from service.metrics import text
from service.queue import JobQueue, abandoned_after_s, connect, queue_names
from service.settings import Settings, get_settings
from service.storage import make_store
from worker import runner as runner_module
from worker.runner import JobRunner, WorkerEngine

if TYPE_CHECKING:
    from engines.engine import Engine
    from engines.source_cache import SourceCache
    from worker.live import LiveServer

log = structlog.get_logger("worker")


_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class AnimationWorker(SimpleWorker):
    """A non-forking RQ worker that runs animation jobs with one `JobRunner`."""

    max_connection_wait_time = 5.0
    """Longest pause between reconnection attempts while Redis is away (RQ's default is 60 s)."""

    def __init__(
        self,
        runner: JobRunner,
        settings: Settings,
        connection: redis.Redis,
        *,
        name: str | None = None,
        idle_poll_s: int = 5,
    ) -> None:
        heartbeat = settings.worker_heartbeat_s
        super().__init__(
            queue_names(settings.queue_prefix),
            name=name
            or settings.worker_name
            or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}",
            connection=connection,
            serializer=JSONSerializer,
            worker_ttl=max(60, 4 * heartbeat),
            job_monitoring_interval=heartbeat,
            default_result_ttl=settings.result_ttl_s,
        )
        self.runner = runner
        runner.worker_name = self.name
        self._idle_poll_s = idle_poll_s
        self._scheduler_interval = settings.scheduler_interval_s
        self._abandoned_after_s = abandoned_after_s(settings)
        self._reaper_interval_s = settings.reaper_interval_s
        self._reaper_lock = f"{settings.queue_prefix}:reaper"
        self._release_lock = connection.register_script(_RELEASE_LOCK)
        self._scheduler_stop = threading.Event()
        self._scheduler_thread: threading.Thread | None = None

    def stop(self) -> None:
        """Warm stop: finish the current job, then leave the work loop (within `idle_poll_s`)."""
        self._stop_requested = True

    def get_heartbeat_ttl(self, job: RQJob, working_time: float = 0.0) -> int:
        """How long the job's execution stays alive without a heartbeat (`job_abandoned_after_s`)."""
        return self._abandoned_after_s

    def reap_abandoned(self) -> None:
        """Hand jobs whose execution expired to RQ, which re-queues them or fails them (`on_job_failure`).

        One worker at a time reaps (a lock that expires after `reaper_interval_s`); failure
        callbacks are timed by a timer, so this runs off the main thread too.
        """
        for queue in self.queues:
            lock = f"{self._reaper_lock}:{queue.name}"
            if not self.connection.set(lock, self.name, nx=True, ex=self._reaper_interval_s):
                continue
            registry = StartedJobRegistry(
                queue.name,
                connection=self.connection,
                serializer=JSONSerializer,
                death_penalty_class=TimerDeathPenalty,
            )
            registry.cleanup(exception_handlers=self._exc_handlers)

    def clean_registries(self) -> None:
        """RQ's registry maintenance, abandoned jobs first (so their callbacks run under a timer)."""
        self.reap_abandoned()
        super().clean_registries()

    def run_maintenance_tasks(self) -> None:
        """RQ's periodic maintenance; skipped while Redis is away (the next round catches up)."""
        try:
            super().run_maintenance_tasks()
        except _REDIS_DOWN as exc:
            log.warning("worker.maintenance_failed", error=str(exc))

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's suspension check, waiting out a Redis outage instead of leaving the work loop."""
        while True:
            try:
                return super().check_for_suspension(burst)
            except _REDIS_DOWN as exc:
                self.wait_for_redis(exc)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's worker heartbeat; a missed one while Redis is away is only logged."""
        try:
            super().heartbeat(timeout, pipeline)
        except _REDIS_DOWN as exc:
            log.warning("worker.heartbeat_failed", error=str(exc))

    def wait_for_redis(self, error: Exception) -> None:
        """Block until Redis answers again (or a stop is requested), backing off up to 5 s."""
        log.warning("worker.redis_unavailable", error=str(error))
        delay = 0.25
        while not self._stop_requested:
            time.sleep(delay)
            try:
                self.connection.ping()
            except _REDIS_DOWN:
                delay = min(delay * 2, self.max_connection_wait_time)
                continue
            log.info("worker.redis_back")
            return

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            super()._install_signal_handlers()

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """Register the worker, then start the retry scheduler thread.

        Off the main thread (embedded), job timeouts use a timer instead of SIGALRM.
        """
        if threading.current_thread() is not threading.main_thread():
            self.death_penalty_class = TimerDeathPenalty
            for queue in self.queues:
                queue.death_penalty_class = TimerDeathPenalty
        super().bootstrap(*args, **kwargs)
        runner_module.register(self.runner)
        self._scheduler_stop.clear()
        self._scheduler_thread = threading.Thread(
            target=self._run_scheduler, name="rq-scheduler", daemon=True
        )
        self._scheduler_thread.start()
        log.info("worker.started", worker=self.name, queues=self.queue_names())

    def teardown(self) -> None:
        """Stop the scheduler thread, then unregister the worker."""
        self._scheduler_stop.set()
        if self._scheduler_thread is not None:
            self._scheduler_thread.join(timeout=10)
        runner_module.unregister(self.runner)
        self.runner.close()
        super().teardown()
        log.info("worker.stopped", worker=self.name)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[RQJob, Queue] | None:
        """Wait for a job in short slices, so that `stop()` is noticed while idle."""
        if timeout is None:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        poll = max(1, min(timeout, self._idle_poll_s))
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(poll, poll)
            if result is not None:
                return result
        return None

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        """Run the job in this thread with this worker's runner active and heartbeats flowing."""
        token = runner_module.activate(self.runner)
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(
            target=self._beat, args=(job, execution, done), name="rq-heartbeat", daemon=True
        )
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        except _REDIS_DOWN as exc:
            # RQ could not record the outcome; the job stays started and is reaped once expired
            self.wait_for_redis(exc)
        finally:
            done.set()
            beat.join(timeout=10)
            runner_module.deactivate(token)
        try:
            self.set_state(WorkerStatus.IDLE)
        except _REDIS_DOWN as exc:
            log.warning("worker.state_not_recorded", error=str(exc))

    def _beat(self, job: RQJob, execution: Any, done: threading.Event) -> None:
        while not done.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.exceptions.RedisError as exc:
                log.warning("worker.heartbeat_failed", error=str(exc))
            self.runner.heartbeat()

    def _free_dead_scheduler_locks(self) -> None:
        """Release retry-scheduler locks whose holder stopped heartbeating for `job_abandoned_after_s`.

        RQ keeps a dead scheduler's lock for a minute and only tries again every two, which would
        hold up delayed retries, the retries of a crashed worker's jobs included, that long.
        """
        for name in self.queue_names():
            key = RQScheduler.get_locking_key(name)
            holder = self.connection.get(key)
            if holder is None:
                continue
            beat = self.connection.hget(SCHEDULER_KEY_TEMPLATE % text(holder), "last_heartbeat")
            if beat is not None and (now() - utcparse(text(beat))).total_seconds() < self._abandoned_after_s:
                continue
            if self._release_lock(keys=[key], args=[holder]):
                log.warning("worker.scheduler_lock_freed", queue=name, holder=text(holder))

    def _run_scheduler(self) -> None:
        scheduler = RQScheduler(
            self.queues,
            connection=self.connection,
            interval=self._scheduler_interval,
            serializer=JSONSerializer,
        )
        next_reap = time.monotonic()
        try:
            scheduler.register_birth()
            while True:
                try:
                    if scheduler.acquired_locks != set(self.queue_names()):
                        self._free_dead_scheduler_locks()
                        scheduler.acquire_locks()
                    if scheduler.acquired_locks:
                        scheduler.heartbeat()
                        scheduler.enqueue_scheduled_jobs()
                    if time.monotonic() >= next_reap:
                        next_reap = time.monotonic() + self._reaper_interval_s
                        self.reap_abandoned()
                except redis.exceptions.RedisError as exc:
                    log.warning("worker.scheduler_error", error=str(exc))
                if self._scheduler_stop.wait(self._scheduler_interval):
                    break
        finally:
            try:
                scheduler.stop()
            except redis.exceptions.RedisError as exc:
                log.warning("worker.scheduler_stop_failed", error=str(exc))


def load_engine(settings: Settings) -> WorkerEngine:
    """Load the engines once (engines.engine.load_engine from the settings' EngineConfig)."""
    return job_engine(settings, *load_compute(settings))


def load_compute(settings: Settings) -> tuple[Engine, SourceCache]:
    """The loaded engine and the cache of prepared sources, which the jobs and the live sessions share."""
    from engines.engine import load_engine as load
    from engines.source_cache import SourceCache

    try:
        config = settings.engine_config()
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    return load(config), SourceCache(settings.source_cache_mb * 2**20)


def job_engine(settings: Settings, engine: Engine, cache: SourceCache) -> WorkerEngine:
    """The jobs' animator and editor on a loaded engine, with the input limits of the settings."""
    from engines.editor import Editor
    from engines.media import Limits
    from engines.pipeline import Animator

    limits = Limits(
        max_pixels=max(settings.max_source_pixels, settings.max_driving_pixels),
        max_frames=settings.max_driving_frames,
        max_seconds=settings.max_driving_seconds,
    )
    animator = Animator(engine)
    return WorkerEngine(
        animator=animator,
        editor=Editor(engine, cache),
        limits=limits,
        motion=animator,
        identity=settings.engine_config().model_dump_json(),
    )


def start_live(settings: Settings, engine: Engine, cache: SourceCache, name: str) -> LiveServer | None:
    """The worker's live server on `engine`, started and advertised (None when live_slots is 0)."""
    from worker.live import LiveServer

    if settings.live_slots == 0:
        return None
    server = LiveServer(settings, engine, name=name, cache=cache)
    server.start()
    return server


def build_worker(settings: Settings, engine: WorkerEngine, *, idle_poll_s: int = 5) -> AnimationWorker:
    """A worker for `settings` running jobs with `engine` (an injectable animator, e.g. in tests)."""
    connection = connect(settings)
    job_runner = JobRunner(
        settings=settings, queue=JobQueue(connection, settings), store=make_store(settings), engine=engine
    )
    return AnimationWorker(job_runner, settings, connection, idle_poll_s=idle_poll_s)


def main(settings: Settings | None = None) -> None:
    """Run a worker until SIGTERM/SIGINT (`liveportrait worker`): log setup, engine load, work loop."""
    from service.logs import configure_logging

    settings = settings or get_settings()
    configure_logging(settings)
    engine, cache = load_compute(settings)
    worker = build_worker(settings, job_engine(settings, engine, cache))
    live = start_live(settings, engine, cache, worker.name)
    try:
        worker.work(logging_level=settings.log_level.upper())
    finally:
        if live is not None:
            live.stop()
