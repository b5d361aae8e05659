"""A worker dies (SIGKILL) or stalls (SIGSTOP) in the middle of a job.

Workers are real processes (tests/reliability/worker_entry.py) running the engine double
`FakeAnimator` (real PyAV-written MP4s, in place of the GPU model); Redis is the test Redis and the
store is S3 on moto. Timings come from FAST_RECOVERY (abandoned after 3 s, reaper every 1 s,
retry backoff 1 s).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import av
import httpx
import pytest

from service.contract import Job
from service.queue import JobQueue
from service.settings import Settings
from service.storage import Store
from tests.reliability import harness
from tests.reliability.harness import WorkerProcess, submit, wait_for_job, worker_processes
from tests.waiting import wait_until
from tests.worker.doubles import queue_and_store

pytestmark = pytest.mark.slow

RENDER_DELAY_S = 0.25
"""Per-frame delay of the first worker, so that it is surely mid-job when it is killed (a worker
process cannot be stopped mid-render with a doubles.Hold, which works within one process only)."""


Spawn = Callable[..., WorkerProcess]
CrashEnv = tuple[Settings, JobQueue, Store, Spawn]


class S3Env(Protocol):
    """The `s3_env` fixture: settings with `job_retries` on a fresh bucket, their queue and store,
    and `spawn` for worker processes (all killed when the block ends)."""

    def __call__(self, job_retries: int) -> AbstractContextManager[CrashEnv]: ...


def s3_keys(settings: Settings, prefix: str) -> list[str]:
    """The object keys under `prefix` in the settings' bucket."""
    assert settings.s3_endpoint_url is not None
    return harness.s3_keys(settings.s3_endpoint_url, settings.s3_bucket, prefix)


def inputs_gone(settings: Settings, job_id: str) -> None:
    """Wait until the job's inputs are deleted (just after the job is settled, so before its worker stops)."""
    wait_until(lambda: s3_keys(settings, f"inputs/{job_id}/") == [], 20, "the inputs to be deleted")


def job_under_way(
    spawn: Callable[..., WorkerProcess], queue: JobQueue, store: Store, media: dict[str, Path]
) -> tuple[WorkerProcess, str]:
    """Spawn a slow worker-a, submit a job and wait until worker-a rendered 4 of its frames."""
    worker = spawn("worker-a", frame_delay=RENDER_DELAY_S)
    job_id = submit(queue, store, media["face"], media["driving"])
    wait_for_job(queue, job_id, lambda r: r.worker == worker.name and r.frames_done >= 4)
    return worker, job_id


def kill_mid_job(worker: WorkerProcess, queue: JobQueue, job_id: str) -> None:
    """SIGKILL `worker` once it rendered a few frames of the job."""
    wait_for_job(queue, job_id, lambda r: r.worker == worker.name and r.frames_done >= 2, timeout=30)
    worker.kill()


def rq_state(queue: JobQueue, worker: WorkerProcess) -> str | None:
    """The worker's state as RQ records it in Redis (busy, idle, ...)."""
    state = queue.redis.hget(f"rq:worker:{worker.name}", "state")
    return state.decode() if isinstance(state, bytes) else state


@pytest.fixture
def s3_env(fast_settings: Callable[..., Settings], s3_bucket: str, tmp_path: Path) -> S3Env:
    """`with s3_env(job_retries) as (settings, queue, store, spawn)`: fast-recovery settings on a fresh
    moto bucket, their queue and store, and worker processes logging to tmp_path."""

    @contextmanager
    def build(job_retries: int) -> Iterator[CrashEnv]:
        settings = fast_settings(storage_backend="s3", s3_bucket=s3_bucket, job_retries=job_retries)
        with worker_processes(settings, tmp_path) as spawn:
            yield settings, *queue_and_store(settings), spawn

    return build


def test_killed_worker_job_is_requeued_and_finished_by_another_worker(
    s3_env: S3Env, media: dict[str, Path], tmp_path: Path
) -> None:
    with s3_env(job_retries=2) as (settings, queue, store, spawn):
        first, job_id = job_under_way(spawn, queue, store, media)
        first.kill()
        second = spawn("worker-b")
        rerun = wait_for_job(queue, job_id, lambda r: r.attempts == 2 and r.status == "running", timeout=30)
        record = wait_for_job(queue, job_id)
        inputs_gone(settings, job_id)
    assert (record.status, record.attempts, record.worker) == ("succeeded", 2, second.name)
    assert record.result_key == f"results/{job_id}/2/output.mp4"
    assert s3_keys(settings, "results/") == [record.result_key], "exactly one result object"
    out = store.get(record.result_key, tmp_path / "out.mp4")
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16 == record.result_frames
    assert "job.requeued" in second.log()
    assert rerun.worker == second.name, "attempt 2 ran on the worker started after the kill"


def test_job_fails_worker_lost_once_retries_are_spent(s3_env: S3Env, media: dict[str, Path]) -> None:
    with s3_env(job_retries=1) as (settings, queue, store, spawn):
        job_id = submit(queue, store, media["face"], media["driving"])
        for name in ("worker-a", "worker-b"):
            kill_mid_job(spawn(name, frame_delay=RENDER_DELAY_S), queue, job_id)
        spawn("worker-c")
        record = wait_for_job(queue, job_id, timeout=30)
        inputs_gone(settings, job_id)
    assert (record.status, record.error_code, record.attempts) == ("failed", "worker_lost", 2)
    assert record.error_message == "the worker running this job stopped responding"
    assert record.result_key is None and s3_keys(settings, "results/") == []


def test_stalled_worker_cannot_overwrite_the_attempt_that_replaced_it(
    s3_env: S3Env, media: dict[str, Path]
) -> None:
    with s3_env(job_retries=2) as (settings, queue, store, spawn):
        stalled, job_id = job_under_way(spawn, queue, store, media)
        stalled.signal(signal.SIGSTOP)
        replacement = spawn("worker-b")
        replaced = wait_for_job(queue, job_id, timeout=30)
        stalled.signal(signal.SIGCONT)
        wait_until(lambda: "job.superseded" in stalled.log(), 15, "the stalled attempt to notice")
        # done with the superseded attempt: RQ marks the worker idle after the job's last write
        wait_until(lambda: rq_state(queue, stalled) == "idle", 15, "the stalled worker to be idle again")
        after = queue.get(job_id)
        assert stalled.alive, "a superseded attempt is no reason to exit"
    assert (replaced.status, replaced.attempts, replaced.worker) == ("succeeded", 2, replacement.name)
    assert after == replaced, "the stalled attempt changed nothing"
    assert s3_keys(settings, "results/") == [replaced.result_key]


def test_a_killed_workers_job_shows_stalled_then_requeued_and_finishes(
    fast_settings: Callable[..., Settings],
    s3_bucket: str,
    gateway_server: Callable[[Settings], str],
    media: dict[str, Path],
    tmp_path: Path,
) -> None:
    """The state and the events of the job tell what happened, through a gateway (which flags the stall);
    the next worker to start removes the dead attempt's work folder."""
    # taken for dead only after the stall is flagged (2 heartbeats late), as with the default timings
    settings = fast_settings(
        storage_backend="s3", s3_bucket=s3_bucket, job_retries=2, job_abandoned_after_s=8
    )
    queue, store = queue_and_store(settings)
    url = gateway_server(settings)
    with worker_processes(settings, tmp_path) as spawn:
        first, job_id = job_under_way(spawn, queue, store, media)
        (dead_area,) = Path(settings.work_dir).glob("worker-*/")  # type: ignore[arg-type]
        assert list(dead_area.glob(f"job-{job_id}-*")), "the attempt works in its worker's folder"
        first.kill()
        stalled = wait_for_job(queue, job_id, lambda r: r.stalled, timeout=30)
        second = spawn("worker-b")  # it reaps the abandoned attempt and runs the retry
        wait_until(lambda: not dead_area.exists(), 30, "the dead worker's folder to be removed")
        record = wait_for_job(queue, job_id, timeout=60)
    assert stalled.status == "running" and stalled.frames_done >= 4 and stalled.attempts == 1
    assert (record.status, record.attempts, record.worker) == ("succeeded", 2, second.name)
    assert record.last_error_code == "worker_lost", "the lost attempt's error stays on the job"
    with httpx.Client(base_url=url, timeout=30) as client:
        events = queue.events(job_id)
        streamed = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "0-0"}).text
    kinds = [event.type for event in events]
    lost = kinds.index("stalled")
    assert kinds[lost : lost + 3] == ["stalled", "requeued", "started"], kinds
    assert kinds[-1] == "succeeded"
    shown = [Job.model_validate_json(line[6:]) for line in streamed.splitlines() if line.startswith("data: ")]
    assert [job.status for job in shown][lost : lost + 3] == ["running", "queued", "running"]
    assert shown[lost].stalled and shown[lost].progress.eta_s is None
    lost_error = shown[lost + 1].last_error
    assert lost_error is not None and lost_error.code == "worker_lost"
    assert shown[-1].status == "succeeded" and shown[-1].attempts == 2 and not shown[-1].stalled
