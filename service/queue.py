"""The RQ adapter and the state of each job in Redis.

Queues: ``{prefix}-high``, ``{prefix}-default`` and ``{prefix}-low``; workers drain them in that
order. A job is an RQ job (JSON serializer, our own id) whose only argument is the contract's
`JobPayload` as a JSON dict. Its user-visible state lives in one Redis hash, ``{prefix}:job:{id}``,
written by the gateway and the worker through small Lua scripts so that every transition is atomic:

=================  ==========================================================================
field              meaning
=================  ==========================================================================
status             queued | running | succeeded | failed | canceled
priority           high | default | low
owner              sha256 of the API key that submitted it ("open" without keys)
payload            the JobPayload, JSON
created_at         epoch seconds (float); likewise started_at, finished_at, progress_at
frames_done        frames rendered in the current attempt
frames_total       frames the current attempt will render (once known)
cancel_requested   "1" once a cancel was asked for while running
attempts           how many times a worker started the job
worker             name of the worker of the current attempt
error_code         failure code, e.g. no_face, corrupt_media, too_large, internal_error
error_message      failure message for humans
result_key         storage key of the result; result_content_type, result_frames, result_fps,
                   result_bytes describe it
=================  ==========================================================================

How long the hash lives is `job_lifetime_s(settings, status)`, the one rule the owner listing
(service.gateway.listing) also trims by: from its submission while the job is queued or running (the
hash expires at `created_at` plus that), from its end once settled (`result_ttl_s` when succeeded or
canceled, `failure_ttl_s` when failed).

Attempts are fenced: `claim_attempt` returns the attempt number, and a worker passes it to every
later transition (progress, succeed, fail, cancel, requeue), which is refused once a newer attempt
of the job started. A worker that was taken for dead but was only stalled can thus never overwrite
the progress or the outcome of the attempt that replaced it.
Idempotency keys live at ``{prefix}:idem:{sha256(scope, key)}``; metrics at ``{prefix}:metrics``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as RedisRetry
from rq import Callback, Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from service import metrics
from service.contract import PRIORITIES, JobPayload, Priority
from service.settings import Settings

JOB_FUNCTION = "worker.runner.run_job"
"""Dotted path of the function a worker runs for a job (resolved in the worker process only)."""
FAILURE_CALLBACK = "worker.runner.on_job_failure"
"""Dotted path of RQ's failure callback, which also covers jobs abandoned by a dead worker."""

_CLAIM = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'succeeded' or s == 'failed' or s == 'canceled' then return s end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 'canceled'
end
redis.call('HDEL', KEYS[1], 'frames_total', 'progress_at')
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2], 'frames_done', 0)
return 'running:' .. redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

_FENCE = """
local function superseded(attempt)
  return attempt ~= '' and redis.call('HGET', KEYS[1], 'attempts') ~= attempt
end
"""

_PROGRESS = (
    _FENCE
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or superseded(ARGV[4]) then return -1 end
local before = tonumber(redis.call('HGET', KEYS[1], 'frames_done') or '0')
local done = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'frames_done', ARGV[1], 'frames_total', ARGV[2], 'progress_at', ARGV[3])
if done > before then redis.call('HINCRBY', KEYS[2], 'frames', done - before) end
return done - before
"""
)

_FINISH = (
    _FENCE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'running' then return s or 'missing' end
if superseded(ARGV[4]) then return 'superseded' end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 'ok'
"""
)

_REQUEUE = (
    _FENCE
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or superseded(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'started_at', 'frames_done', 'frames_total', 'progress_at', 'worker')
return 1
"""
)

_CANCEL = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 'canceled'
end
if s == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return 'cancel_requested'
end
return 'ended:' .. s
"""

CancelOutcome = Literal["canceled", "cancel_requested", "succeeded", "failed", "missing"]
SETTLED = ("succeeded", "failed", "canceled")
"""The statuses a job ends in."""


def connect(settings: Settings) -> Redis:
    """A Redis client for the configured URL: short connect timeout, two quick retries."""
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
        retry=RedisRetry(ExponentialBackoff(cap=0.25, base=0.02), 2),
    )


def abandoned_after_s(settings: Settings) -> int:
    """Seconds without a heartbeat after which a running job counts as abandoned by its worker."""
    return settings.job_abandoned_after_s or 4 * settings.worker_heartbeat_s + 15


def job_lifetime_s(settings: Settings, status: str) -> int:
    """Seconds a job's hash lives in `status`: counted from its end once settled, else from its submission.

    A settled job lives `failure_ttl_s` (failed) or `result_ttl_s` (succeeded, canceled). A queued or
    running job lives, from its submission, long enough for every attempt to time out or be found
    abandoned and reaped, with the retry backoffs between them, and then the longer of the two TTLs.
    The owner listing keeps each entry that long from the job's creation: entry and hash expire together.
    """
    if status == "failed":
        return settings.failure_ttl_s
    if status in SETTLED:
        return settings.result_ttl_s
    attempts = settings.job_retries + 1
    per_attempt = settings.job_timeout_s + abandoned_after_s(settings) + settings.reaper_interval_s
    waits = sum(settings.retry_backoff_s) + per_attempt * attempts
    return max(settings.result_ttl_s, settings.failure_ttl_s) + waits


def _fence(attempt: int | None) -> str:
    return "" if attempt is None else str(attempt)


def queue_names(prefix: str) -> list[str]:
    """The RQ queue names, highest priority first."""
    return [f"{prefix}-{priority}" for priority in PRIORITIES]


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


@dataclass(frozen=True)
class JobRecord:
    """A decoded job hash."""

    id: str
    status: str
    priority: Priority
    payload: dict
    created_at: float
    owner: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    progress_at: float | None = None
    frames_done: int = 0
    frames_total: int | None = None
    cancel_requested: bool = False
    attempts: int = 0
    worker: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    result_key: str | None = None
    result_content_type: str | None = None
    result_frames: int | None = None
    result_fps: float | None = None
    result_bytes: int | None = None

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[bytes | str, bytes | str]) -> JobRecord:
        """Decode the Redis hash of job `job_id`."""
        f = {metrics.text(k): metrics.text(v) for k, v in raw.items()}

        def num(name: str) -> float | None:
            return float(f[name]) if f.get(name) not in (None, "") else None

        def whole(name: str) -> int | None:
            return int(f[name]) if f.get(name) not in (None, "") else None

        return cls(
            id=job_id,
            status=f.get("status", "queued"),
            priority=f.get("priority", "default"),  # type: ignore[arg-type]
            payload=json.loads(f.get("payload", "{}")),
            created_at=float(f.get("created_at", 0.0)),
            owner=f.get("owner", ""),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            progress_at=num("progress_at"),
            frames_done=int(f.get("frames_done") or 0),
            frames_total=whole("frames_total"),
            cancel_requested=f.get("cancel_requested") == "1",
            attempts=int(f.get("attempts") or 0),
            worker=f.get("worker"),
            error_code=f.get("error_code"),
            error_message=f.get("error_message"),
            result_key=f.get("result_key"),
            result_content_type=f.get("result_content_type"),
            result_frames=whole("result_frames"),
            result_fps=num("result_fps"),
            result_bytes=whole("result_bytes"),
        )


class JobQueue:
    """Submit, inspect and cancel jobs (gateway side); claim, report and finish them (worker side)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.prefix = settings.queue_prefix
        self.metrics_key = f"{self.prefix}:metrics"
        self.queues: dict[str, Queue] = {
            priority: Queue(name, connection=redis, serializer=JSONSerializer)
            for priority, name in zip(PRIORITIES, queue_names(self.prefix), strict=True)
        }
        self._claim = redis.register_script(_CLAIM)
        self._progress = redis.register_script(_PROGRESS)
        self._finish = redis.register_script(_FINISH)
        self._requeue = redis.register_script(_REQUEUE)
        self._cancel = redis.register_script(_CANCEL)

    # keys
    def job_key(self, job_id: str) -> str:
        """The Redis key of a job's state hash."""
        return f"{self.prefix}:job:{job_id}"

    def _idempotency_key(self, scope: str, key: str) -> str:
        digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        return f"{self.prefix}:idem:{digest}"

    # gateway side
    def ping(self) -> None:
        """Raise a redis error unless Redis answers."""
        self.redis.ping()

    def reserve_idempotency(self, scope: str, key: str, fingerprint: str, job_id: str) -> str | None:
        """Bind `key` to `job_id`; if it was bound before, return that job's id instead.

        Raises IdempotencyConflict when the key was bound to a request with another fingerprint.
        A binding whose job no longer exists (it expired) is replaced.
        """
        redis_key = self._idempotency_key(scope, key)
        value = json.dumps({"job_id": job_id, "fingerprint": fingerprint, "at": time.time()})
        ttl = self.settings.idempotency_ttl_s
        for _ in range(3):
            if self.redis.set(redis_key, value, nx=True, ex=ttl):
                return None
            raw = self.redis.get(redis_key)
            if raw is None:
                continue
            bound = json.loads(raw)
            if bound["fingerprint"] != fingerprint:
                raise IdempotencyConflict(key)
            stale = time.time() - float(bound["at"]) > 60 and not self.redis.exists(
                self.job_key(bound["job_id"])
            )
            if not stale:
                return str(bound["job_id"])
            self.redis.set(redis_key, value, xx=True, ex=ttl)
            return None
        raise RuntimeError("could not reserve the idempotency key")

    def release_idempotency(self, scope: str, key: str, job_id: str) -> None:
        """Forget a binding made by `reserve_idempotency` for a job that was never created."""
        redis_key = self._idempotency_key(scope, key)
        raw = self.redis.get(redis_key)
        if raw is not None and json.loads(raw)["job_id"] == job_id:
            self.redis.delete(redis_key)

    def submit(
        self, payload: JobPayload, priority: Priority, owner: str, *, created_at: float | None = None
    ) -> JobRecord:
        """Create the job's hash (owned by `owner`) and enqueue it on the queue of its priority.

        The hash expires `job_lifetime_s(settings, "queued")` after `created_at` (default: now).
        """
        job_id = payload.job_id
        now = time.time() if created_at is None else created_at
        payload_json = payload.model_dump(mode="json")
        key = self.job_key(job_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "status": "queued",
                    "priority": priority,
                    "payload": json.dumps(payload_json, separators=(",", ":")),
                    "created_at": repr(now),
                    "owner": owner,
                    "frames_done": 0,
                    "attempts": 0,
                },
            )
            pipe.pexpireat(key, round((now + job_lifetime_s(self.settings, "queued")) * 1000))
            metrics.count_status(pipe, self.metrics_key, "queued")
            pipe.execute()
        retry = None
        if self.settings.job_retries > 0:
            retry = Retry(max=self.settings.job_retries, interval=list(self.settings.retry_backoff_s) or 0)
        try:
            self.queues[priority].enqueue_call(
                JOB_FUNCTION,
                args=[payload_json],
                job_id=job_id,
                timeout=self.settings.job_timeout_s,
                result_ttl=self.settings.result_ttl_s,
                failure_ttl=self.settings.failure_ttl_s,
                retry=retry,
                on_failure=Callback(FAILURE_CALLBACK),
                description=f"animate {job_id}",
            )
        except BaseException:
            self.redis.delete(key)
            raise
        return JobRecord(
            id=job_id, status="queued", priority=priority, payload=payload_json, created_at=now, owner=owner
        )

    def get(self, job_id: str) -> JobRecord | None:
        """The job's state, or None if unknown (or expired)."""
        raw = self.redis.hgetall(self.job_key(job_id))
        return JobRecord.from_hash(job_id, raw) if raw else None

    def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a queued job at once; flag a running one for its worker to stop between batches."""
        now = time.time()
        # the script answers canceled, cancel_requested, missing or ended:{succeeded|failed|canceled}
        outcome: str = self._cancel(
            keys=[self.job_key(job_id)], args=[repr(now), job_lifetime_s(self.settings, "canceled")]
        ).decode()
        if outcome.startswith("ended:"):  # already finished (or canceled): nothing changes, nothing counted
            return cast(CancelOutcome, outcome.removeprefix("ended:"))
        if outcome == "canceled":
            metrics.count_status(self.redis, self.metrics_key, "canceled")
            with contextlib.suppress(NoSuchJobError, InvalidJobOperation):
                RQJob.fetch(job_id, connection=self.redis, serializer=JSONSerializer).cancel()
        return cast(CancelOutcome, outcome)

    def depths(self) -> dict[str, int]:
        """Jobs waiting in each priority's queue."""
        return {priority: queue.count for priority, queue in self.queues.items()}

    def running(self) -> int:
        """Jobs being executed right now, over all queues."""
        return sum(queue.started_job_registry.count for queue in self.queues.values())

    # worker side
    def claim(self, job_id: str, worker_name: str) -> str:
        """Mark the job running; returns 'running', or the status that forbids running it."""
        return self.claim_attempt(job_id, worker_name)[0]

    def claim_attempt(self, job_id: str, worker_name: str) -> tuple[str, int]:
        """Start a new attempt of the job: ('running', its attempt number), or (the status that forbids
        running it, 0). A new attempt supersedes any earlier one that may still be alive."""
        now = time.time()
        outcome = self._claim(
            keys=[self.job_key(job_id)],
            args=[repr(now), worker_name, job_lifetime_s(self.settings, "canceled")],
        ).decode()
        attempt = 0
        if outcome.startswith("running:"):
            outcome, attempt = "running", int(outcome.partition(":")[2])
            record = self.get(job_id)
            with self.redis.pipeline() as pipe:
                metrics.count_status(pipe, self.metrics_key, "running")
                if record is not None:
                    metrics.observe(pipe, self.metrics_key, "wait", now - record.created_at)
                pipe.execute()
        elif outcome == "canceled":
            metrics.count_status(self.redis, self.metrics_key, "canceled")
        return outcome, attempt

    def progress(
        self, job_id: str, frames_done: int, frames_total: int, *, attempt: int | None = None
    ) -> None:
        """Record the frames done so far of a running job (of its attempt `attempt`, when given)."""
        self._progress(
            keys=[self.job_key(job_id), self.metrics_key],
            args=[frames_done, frames_total, repr(time.time()), _fence(attempt)],
        )

    def cancel_requested(self, job_id: str, *, attempt: int | None = None) -> bool:
        """Whether the job should stop: a cancel was asked for, it vanished, or `attempt` was superseded."""
        flag, status, attempts = self.redis.hmget(
            self.job_key(job_id), ["cancel_requested", "status", "attempts"]
        )
        superseded = attempt is not None and attempts != str(attempt).encode()
        return flag == b"1" or status is None or superseded

    def succeed(
        self,
        job_id: str,
        *,
        result_key: str,
        content_type: str,
        frames: int,
        fps: float,
        size_bytes: int,
        attempt: int | None = None,
    ) -> bool:
        """Mark a running job succeeded with its result (refused when `attempt` was superseded)."""
        fields: dict[str, str | int] = {
            "result_key": result_key,
            "result_content_type": content_type,
            "result_frames": frames,
            "result_fps": repr(float(fps)),
            "result_bytes": size_bytes,
        }
        return self._end(job_id, "succeeded", fields, attempt)

    def fail(self, job_id: str, code: str, message: str, *, attempt: int | None = None) -> bool:
        """Mark a running job failed (refused when `attempt` was superseded)."""
        fields = {"error_code": code, "error_message": message}
        return self._end(job_id, "failed", fields, attempt)

    def mark_canceled(self, job_id: str, *, attempt: int | None = None) -> bool:
        """Mark a running job canceled (its worker stopped it; refused when `attempt` was superseded)."""
        return self._end(job_id, "canceled", {}, attempt)

    def requeue(self, job_id: str, *, attempt: int | None = None) -> bool:
        """Put a running job back to queued, before RQ retries it (refused when `attempt` was superseded)."""
        return bool(self._requeue(keys=[self.job_key(job_id)], args=[_fence(attempt)]))

    def _end(
        self, job_id: str, status: str, fields: Mapping[str, str | int | float], attempt: int | None
    ) -> bool:
        """Settle a running job in `status`; its hash then lives `job_lifetime_s(settings, status)`."""
        now = time.time()
        flat: list[str | int | float] = [
            status,
            repr(now),
            job_lifetime_s(self.settings, status),
            _fence(attempt),
        ]
        for name, value in fields.items():
            flat.extend((name, value))
        ended = self._finish(keys=[self.job_key(job_id)], args=flat) == b"ok"
        if ended:
            record = self.get(job_id)
            with self.redis.pipeline() as pipe:
                metrics.count_status(pipe, self.metrics_key, status)
                if record is not None and record.started_at is not None:
                    metrics.observe(pipe, self.metrics_key, "run", now - record.started_at)
                pipe.execute()
        return ended
