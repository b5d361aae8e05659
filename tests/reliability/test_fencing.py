"""Attempt fencing in the job hash (service/queue.py), on the real Redis: once a newer attempt of
a job started, every transition of the older one is refused."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial

from service.contract import InputLocation, JobPayload
from service.queue import JobQueue, connect
from service.settings import Settings


def test_a_superseded_attempt_can_change_nothing(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(job_retries=2)
    queue = JobQueue(connect(settings), settings)
    job_id = uuid.uuid4().hex
    key = InputLocation(key=f"inputs/{job_id}/source.png")
    queue.submit(JobPayload(job_id=job_id, source=key, driving=key), "default", owner="open")

    assert queue.claim_attempt(job_id, "stalled") == ("running", 1)
    queue.progress(job_id, 4, 16, attempt=1)
    assert queue.requeue(job_id, "worker_lost", "lost", attempt=1), "the reaper re-queues the lost attempt"
    assert queue.claim_attempt(job_id, "replacement") == ("running", 2)
    queue.progress(job_id, 2, 16, attempt=2)

    queue.progress(job_id, 12, 16, attempt=1)
    assert queue.cancel_requested(job_id, attempt=1), "the stalled attempt is told to stop"
    assert not queue.cancel_requested(job_id, attempt=2)
    assert not queue.requeue(job_id, "worker_lost", "late", attempt=1)
    assert not queue.mark_canceled(job_id, attempt=1)
    assert not queue.fail(job_id, "internal_error", "late", attempt=1)
    succeed = partial(queue.succeed, job_id, content_type="video/mp4", frames=16, fps=25.0, size_bytes=1)
    assert not succeed(result_key=f"results/{job_id}/1/output.mp4", attempt=1)
    record = queue.get(job_id)
    assert record is not None
    assert (record.status, record.worker, record.frames_done, record.result_key) == (
        "running",
        "replacement",
        2,
        None,
    )

    assert succeed(result_key=f"results/{job_id}/2/output.mp4", attempt=2)
    final = queue.get(job_id)
    assert final is not None and (final.status, final.attempts) == ("succeeded", 2)
    assert final.result_key == f"results/{job_id}/2/output.mp4"
