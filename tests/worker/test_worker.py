"""The worker machinery with real Redis and a real store, driving FakeAnimator (the GPU engine's
test double from tests.worker.doubles, which writes real MP4s with PyAV)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
import pytest
from rq.exceptions import AbandonedJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from service.contract import InputLocation, JobPayload
from service.queue import JobQueue, JobRecord
from service.settings import Settings
from service.storage import Store
from tests.waiting import wait_until
from tests.worker.doubles import (
    FakeAnimator,
    Hold,
    fake_engine,
    queue_and_store,
    running_worker,
    write_inputs,
    write_png,
)
from worker import runner as runner_module
from worker.runner import JobRunner

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def media(tmp_path: Path) -> dict[str, Path]:
    """A face photo, a blank photo, an 8-frame 25 fps driving video and a text file."""
    folder = tmp_path / "media"
    folder.mkdir()
    face, driving = write_inputs(folder)
    return {
        "face": face,
        "blank": write_png(folder / "blank.png", np.full((96, 96, 3), 127, np.uint8)),
        "driving": driving,
        "text": _write(folder / "notes.txt", b"just some text, no media here\n" * 4),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def submit(
    queue: JobQueue,
    store: Store,
    source: Path | str,
    driving: Path | str,
    priority: str = "default",
) -> str:
    """Store the inputs as the gateway would and enqueue a job; returns its id."""
    job_id = uuid.uuid4().hex
    locations = {}
    for name, value in (("source", source), ("driving", driving)):
        if isinstance(value, Path):
            key = f"inputs/{job_id}/{name}{value.suffix}"
            store.put(key, value)
            locations[name] = InputLocation(key=key)
        else:
            locations[name] = InputLocation(url=value)
    payload = JobPayload(job_id=job_id, source=locations["source"], driving=locations["driving"])
    queue.submit(payload, priority, owner="open")  # type: ignore[arg-type]
    return job_id


def wait_for(
    queue: JobQueue, job_id: str, done: Callable[[JobRecord], bool], timeout: float = 20.0
) -> JobRecord:
    """Poll the job's record until `done(record)`; returns it."""

    def check() -> JobRecord | None:
        record = queue.get(job_id)
        return record if record is not None and done(record) else None

    return wait_until(check, timeout, f"job {job_id}")


def finished(record: JobRecord) -> bool:
    """Whether the job reached a terminal status."""
    return record.status in ("succeeded", "failed", "canceled")


@pytest.fixture
def env(make_settings: Callable[..., Settings]) -> tuple[Settings, JobQueue, Store]:
    """Settings, a queue and a local store for one test."""
    settings = make_settings()
    return settings, *queue_and_store(settings)


def test_job_succeeds_with_progress_json_payload_and_cleanup(env: Any, media: dict[str, Path]) -> None:
    settings, queue, store = env
    hold = Hold(frames=2)
    engine = fake_engine(FakeAnimator(hold=hold))
    job_id = submit(queue, store, media["face"], media["driving"])
    raw = queue.redis.hget(f"rq:job:{job_id}", "data")
    assert raw is not None and not raw.startswith(b"\x80"), "RQ job data must not be a pickle"
    assert RQJob.fetch(job_id, connection=queue.redis, serializer=JSONSerializer).args[0]["job_id"] == job_id
    seen: list[int] = []

    def noting(done: Callable[[JobRecord], bool]) -> Callable[[JobRecord], bool]:
        """`done`, with each polled record's frames_done noted in `seen` first."""

        def check(record: JobRecord) -> bool:
            seen.append(record.frames_done)
            return done(record)

        return check

    with running_worker(settings, engine), hold:
        wait_for(queue, job_id, noting(lambda r: r.frames_done == 2))  # held there
        hold.release()
        record = wait_for(queue, job_id, noting(finished))
    assert record.status == "succeeded", record
    assert seen == sorted(seen) and any(0 < n < 8 for n in seen), seen
    assert (record.frames_done, record.frames_total, record.result_frames, record.result_fps) == (
        8,
        8,
        8,
        25.0,
    )
    assert record.result_content_type == "video/mp4" and record.attempts == 1
    out = Path(settings.work_dir) / "result.mp4"
    store.get(record.result_key, out)
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8
    assert not store.exists(f"inputs/{job_id}/source.png"), "inputs are deleted after the job"
    assert [p.name for p in Path(settings.work_dir).iterdir()] == ["result.mp4"], "work dirs are removed"
    assert queue.redis.ttl(queue.job_key(job_id)) > 0


def test_high_priority_runs_first(env: Any, media: dict[str, Path]) -> None:
    settings, queue, store = env
    low = submit(queue, store, media["face"], media["driving"], priority="low")
    high = submit(queue, store, media["face"], media["driving"], priority="high")
    assert queue.depths() == {"high": 1, "default": 0, "low": 1}
    with running_worker(settings, fake_engine()):
        low_started, high_started = (wait_for(queue, job_id, finished).started_at for job_id in (low, high))
    assert low_started is not None and high_started is not None and high_started < low_started


def test_cancel_running_job_between_batches(env: Any, media: dict[str, Path]) -> None:
    settings, queue, store = env
    hold = Hold(frames=2)
    with running_worker(settings, fake_engine(FakeAnimator(hold=hold))), hold:
        job_id = submit(queue, store, media["face"], media["driving"])
        wait_for(queue, job_id, lambda r: r.frames_done == 2)  # the render is held after its first batch
        assert queue.cancel(job_id) == "cancel_requested"
        hold.release()
        record = wait_for(queue, job_id, finished)
    assert record.status == "canceled" and record.frames_done == 2, "stopped at the next batch"
    assert record.result_key is None
    assert list(Path(settings.work_dir).iterdir()) == []


def test_no_face_fails_with_its_code_and_the_worker_stays_up(env: Any, media: dict[str, Path]) -> None:
    settings, queue, store = env
    with running_worker(settings, fake_engine()) as worker:
        bad = submit(queue, store, media["blank"], media["driving"])
        failed = wait_for(queue, bad, finished)
        good = submit(queue, store, media["face"], media["driving"])
        succeeded = wait_for(queue, good, finished)
    assert (failed.status, failed.error_code) == ("failed", "no_face")
    assert failed.error_message == "no face found in the source image"
    assert succeeded.status == "succeeded" and succeeded.result_frames == 8
    assert failed.worker == succeeded.worker == worker.name


def test_bad_inputs_fail_with_clear_codes(env: Any, media: dict[str, Path]) -> None:
    settings, queue, store = env
    with running_worker(settings, fake_engine()):
        not_media = submit(queue, store, media["face"], media["text"])
        private_url = submit(queue, store, "http://127.0.0.1:9/face.png", media["driving"])
        records = [wait_for(queue, job_id, finished) for job_id in (not_media, private_url)]
    assert [(r.status, r.error_code) for r in records] == [
        ("failed", "unsupported_media"),
        ("failed", "url_refused"),
    ]


def test_internal_error_is_retried_after_the_backoff(
    make_settings: Callable[..., Settings], media: dict[str, Path]
) -> None:
    settings = make_settings(job_retries=1, retry_backoff_s=[1])
    queue, store = queue_and_store(settings)
    animator = FakeAnimator(fail_times=1)
    with running_worker(settings, fake_engine(animator)):
        job_id = submit(queue, store, media["face"], media["driving"])
        record = wait_for(queue, job_id, finished)
    assert record.status == "succeeded" and record.attempts == 2 and animator.calls == 2


def test_internal_error_on_the_last_attempt_fails_the_job(env: Any, media: dict[str, Path]) -> None:
    settings, queue, store = env
    with running_worker(settings, fake_engine(FakeAnimator(fail_times=1))) as worker:
        crashed = submit(queue, store, media["face"], media["driving"])
        record = wait_for(queue, crashed, finished)
        after = wait_for(queue, submit(queue, store, media["face"], media["driving"]), finished)
    assert (record.status, record.error_code) == ("failed", "internal_error")
    assert "RuntimeError" in (record.error_message or "")
    assert after.status == "succeeded" and record.worker == after.worker == worker.name


def test_url_inputs_are_fetched_over_http(
    make_settings: Callable[..., Settings], media: dict[str, Path]
) -> None:
    settings = make_settings(allow_private_urls=True)
    queue, store = queue_and_store(settings)
    handler = partial(SimpleHTTPRequestHandler, directory=str(media["face"].parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            with running_worker(settings, fake_engine()):
                ok = submit(queue, store, f"{base}/face.png", f"{base}/driving.mp4")
                missing = submit(queue, store, f"{base}/nothing.png", f"{base}/driving.mp4")
                records = [wait_for(queue, job_id, finished) for job_id in (ok, missing)]
        finally:
            server.shutdown()
    assert records[0].status == "succeeded" and records[0].result_frames == 8
    assert (records[1].status, records[1].error_code) == ("failed", "fetch_failed")


def test_abandoned_job_is_failed_by_the_failure_callback(env: Any, media: dict[str, Path]) -> None:
    settings, queue, store = env
    job_id = submit(queue, store, media["face"], media["driving"])
    assert queue.claim(job_id, "a-worker-that-dies") == "running"
    job_runner = JobRunner(settings=settings, queue=queue, store=store, engine=fake_engine())
    runner_module.register(job_runner)
    try:
        rq_job = RQJob.fetch(job_id, connection=queue.redis, serializer=JSONSerializer)
        runner_module.on_job_failure(rq_job, queue.redis, AbandonedJobError, AbandonedJobError(), None)
    finally:
        runner_module.unregister(job_runner)
    record = queue.get(job_id)
    assert record is not None and (record.status, record.error_code) == ("failed", "worker_lost")


def test_sigterm_is_a_warm_shutdown(make_settings: Callable[..., Settings], media: dict[str, Path]) -> None:
    settings = make_settings()
    queue, store = queue_and_store(settings)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FAKE_FRAME_DELAY": "0.1",  # a subprocess worker cannot be held: it renders slowly instead
        "LIVEPORTRAIT_REDIS_URL": settings.redis_url,
        "LIVEPORTRAIT_QUEUE_PREFIX": settings.queue_prefix,
        "LIVEPORTRAIT_LOCAL_STORAGE_DIR": str(settings.local_storage_dir),
        "LIVEPORTRAIT_WORK_DIR": str(settings.work_dir),
        "LIVEPORTRAIT_JOB_RETRIES": "0",
    }
    code = "from tests.worker.doubles import run_worker_process; run_worker_process()"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    try:
        job_id = submit(queue, store, media["face"], media["driving"])
        wait_for(queue, job_id, lambda r: r.frames_done >= 2, timeout=30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    record = queue.get(job_id)
    assert record is not None and record.status == "succeeded" and record.result_frames == 8


def test_heartbeats_keep_a_long_job_alive(
    make_settings: Callable[..., Settings], media: dict[str, Path]
) -> None:
    settings = make_settings(worker_heartbeat_s=1)
    queue, store = queue_and_store(settings)
    wip = f"rq:wip:{settings.queue_prefix}-default"

    def expiry() -> float | None:
        """The latest expiry of a running job's execution (None while there is none)."""
        # withscores=True gives (member, score) pairs; the client's return type does not follow the flag
        pairs = cast(list[tuple[bytes, float]], queue.redis.zrange(wip, 0, -1, withscores=True))
        scores = [score for _, score in pairs]
        return max(scores) if scores else None

    hold = Hold(frames=2)
    with running_worker(settings, fake_engine(FakeAnimator(hold=hold))), hold:
        job_id = submit(queue, store, media["face"], media["driving"])
        wait_for(queue, job_id, lambda r: r.frames_done == 2)  # held mid-render for as long as needed
        first = wait_until(expiry, 10, "the running job's execution to be registered")
        now = time.time()  # to read the expiry (a timestamp) as a distance from now, not to time anything
        wait_until(lambda: (expiry() or 0) >= first + 1.0, 20, "a heartbeat to push the expiry forward")
        running = queue.get(job_id)
        assert running is not None and running.status == "running"
        hold.release()
        record = wait_for(queue, job_id, finished)
    assert first - now < 4 * settings.worker_heartbeat_s + 15 + 1, "expiry is a few heartbeats away"
    assert record.status == "succeeded"


def test_logs_are_json_lines_with_the_job_id() -> None:
    code = (
        "import logging, structlog\n"
        "from service.logs import configure_logging\n"
        "from service.settings import Settings\n"
        "configure_logging(Settings(log_json=True))\n"
        "with structlog.contextvars.bound_contextvars(job_id='abc123'):\n"
        "    structlog.get_logger('worker').info('job.started', retries_left=0)\n"
        "    logging.getLogger('rq.worker').warning('from the standard library')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(line["event"], line["job_id"], line["level"]) for line in lines] == [
        ("job.started", "abc123", "info"),
        ("from the standard library", "abc123", "warning"),
    ]
    assert all("timestamp" in line for line in lines)
