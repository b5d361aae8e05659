"""The RQ adapter and the job hash, on the real Redis."""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from service.contract import InputLocation, JobPayload
from service.metrics import RedisMetricsCollector
from service.queue import IdempotencyConflict, JobQueue, connect, queue_names
from service.settings import Settings


def payload() -> JobPayload:
    """A payload with store-key inputs."""
    job_id = uuid.uuid4().hex
    return JobPayload(
        job_id=job_id,
        source=InputLocation(key=f"inputs/{job_id}/source.png"),
        driving=InputLocation(url="https://93.184.216.34/d.mp4"),
    )


@pytest.fixture
def queue(make_settings: Callable[..., Settings]) -> JobQueue:
    """A JobQueue with retries and explicit TTLs."""
    settings = make_settings(
        job_retries=2, retry_backoff_s=[5, 30], job_timeout_s=120, result_ttl_s=600, failure_ttl_s=900
    )
    return JobQueue(connect(settings), settings)


def test_enqueue_uses_json_our_id_and_explicit_limits(queue: JobQueue) -> None:
    p = payload()
    record = queue.submit(p, "high", owner="k")
    assert queue_names(queue.prefix) == [
        f"{queue.prefix}-high",
        f"{queue.prefix}-default",
        f"{queue.prefix}-low",
    ]
    assert queue.depths() == {"high": 1, "default": 0, "low": 0}
    raw = queue.redis.hgetall(f"rq:job:{p.job_id}")
    data = raw[b"data"]
    assert isinstance(data, bytes)
    func, _, args, kwargs = json.loads(zlib.decompress(data))
    assert (func, args, kwargs) == ("worker.runner.run_job", [p.model_dump(mode="json")], {})
    job = RQJob.fetch(p.job_id, connection=queue.redis, serializer=JSONSerializer)
    assert (job.timeout, job.result_ttl, job.failure_ttl) == (120, 600, 900)
    assert (job.retries_left, job.retry_intervals) == (2, [5, 30])
    assert raw[b"failure_callback_name"] == b"worker.runner.on_job_failure"
    assert record.status == "queued" and record.owner == "k"
    stored = queue.get(p.job_id)
    assert stored is not None and stored.payload == p.model_dump(mode="json")
    assert queue.redis.ttl(queue.job_key(p.job_id)) > 0


def test_transitions(queue: JobQueue) -> None:
    queued, running = payload(), payload()
    queue.submit(queued, "default", owner="k")
    queue.submit(running, "low", owner="k")

    assert queue.cancel(queued.job_id) == "canceled"
    assert queue.claim(queued.job_id, "w1") == "canceled", "a canceled job is never started"
    assert queue.depths()["default"] == 0

    assert queue.claim(running.job_id, "w1") == "running"
    queue.progress(running.job_id, 4, 10)
    record = queue.get(running.job_id)
    assert record is not None and (record.status, record.frames_done, record.frames_total) == (
        "running",
        4,
        10,
    )
    assert not queue.cancel_requested(running.job_id)
    assert queue.cancel(running.job_id) == "cancel_requested"
    assert queue.cancel_requested(running.job_id)
    assert queue.requeue(running.job_id, "worker_lost", "the worker stopped")
    requeued = queue.get(running.job_id)
    assert requeued is not None and requeued.status == "queued"
    assert (requeued.last_error_code, requeued.last_error_message) == ("worker_lost", "the worker stopped")
    assert queue.claim(running.job_id, "w2") == "canceled", "the cancel flag survives a retry"

    failing = payload()
    queue.submit(failing, "default", owner="k")
    assert queue.claim(failing.job_id, "w1") == "running"
    assert queue.fail(failing.job_id, "no_face", "no face")
    assert not queue.succeed(
        failing.job_id, result_key="x", content_type="video/mp4", frames=1, fps=1, size_bytes=1
    )
    assert queue.cancel(failing.job_id) == "failed"
    record = queue.get(failing.job_id)
    assert record is not None and (record.error_code, record.attempts, record.worker) == ("no_face", 1, "w1")
    assert 0 < queue.redis.ttl(queue.job_key(failing.job_id)) <= 900
    assert queue.cancel(uuid.uuid4().hex) == "missing"


def test_idempotency(queue: JobQueue) -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    assert queue.reserve_idempotency("scope", "key-1", "fp-a", first) is None
    assert queue.reserve_idempotency("scope", "key-1", "fp-a", second) == first
    assert queue.reserve_idempotency("other-scope", "key-1", "fp-b", second) is None
    with pytest.raises(IdempotencyConflict):
        queue.reserve_idempotency("scope", "key-1", "fp-b", second)
    queue.release_idempotency("scope", "key-1", first)
    assert queue.reserve_idempotency("scope", "key-1", "fp-b", second) is None


def test_metrics_from_redis(queue: JobQueue) -> None:
    done = payload()
    queue.submit(done, "default", owner="k")
    queue.submit(payload(), "low", owner="k")
    queue.claim(done.job_id, "w")
    queue.progress(done.job_id, 3, 6)
    queue.progress(done.job_id, 6, 6)
    queue.succeed(done.job_id, result_key="r", content_type="video/mp4", frames=6, fps=25, size_bytes=10)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisMetricsCollector(queue.redis, queue.metrics_key, queue.depths, queue.running))
    text = generate_latest(registry).decode()
    for line in (
        'liveportrait_jobs_total{status="queued"} 2.0',
        'liveportrait_jobs_total{status="succeeded"} 1.0',
        "liveportrait_frames_processed_total 6.0",
        'liveportrait_queue_depth{priority="low"} 1.0',
        "liveportrait_job_wait_seconds_count 1.0",
        "liveportrait_job_run_seconds_count 1.0",
        'liveportrait_job_run_seconds_bucket{le="+Inf"} 1.0',
    ):
        assert line in text, line
    assert done.job_id not in text


def test_cancelling_twice_counts_one_cancellation(queue: JobQueue) -> None:
    record = queue.submit(payload(), "default", owner="k")
    assert [queue.cancel(record.id) for _ in range(3)] == ["canceled"] * 3
    canceled = queue.redis.hget(queue.metrics_key, "jobs:canceled")
    assert canceled is not None and int(canceled) == 1


def test_every_transition_is_one_event_in_a_stream_that_expires_with_the_job(queue: JobQueue) -> None:
    from service.queue import events_key, job_lifetime_s

    job = payload()
    queue.submit(job, "default", owner="k")
    assert queue.claim(job.job_id, "w1") == "running"
    queue.progress(job.job_id, 2, 4)
    queue.cancel(job.job_id)
    assert queue.fail(job.job_id, "no_face", "no face")
    events = queue.events(job.job_id)
    assert [e.type for e in events] == ["queued", "started", "progress", "cancel_requested", "failed"]
    assert [e.record.status for e in events] == ["queued", "running", "running", "running", "failed"]
    assert events[2].record.frames_done == 2 and events[-1].record.error_code == "no_face"
    assert [e.id for e in queue.events(job.job_id, after=events[2].id)] == [e.id for e in events[3:]]
    hash_ttl = queue.redis.pttl(queue.job_key(job.job_id))
    stream_ttl = queue.redis.pttl(events_key(queue.prefix, job.job_id))
    assert 0 <= hash_ttl - stream_ttl < 1000 and hash_ttl <= job_lifetime_s(queue.settings, "failed") * 1000
