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
created_at         epoch seconds (float); likewise started_at, finished_at, progress_at, heartbeat_at
frames_done        frames rendered in the current attempt
frames_total       frames the current attempt will render (once known)
phase              the attempt's phase (common.progress); phase_done, phase_total its frames
fraction, eta_s    the worker's estimate of the whole attempt: share done, seconds left (at progress_at)
stalled            "1" once the attempt's heartbeat is older than `stalled_after_s` (until it beats)
cancel_requested   "1" once a cancel was asked for while running
attempts           how many times a worker started the job
worker             name of the worker of the current attempt
error_code         failure code, e.g. no_face, corrupt_media, too_large, internal_error
error_message      failure message for humans
last_error_code    why the previous attempt was lost (worker_lost, internal_error); last_error_message
webhook            the job's webhook {url, events}, JSON; webhook_* fields: its deliveries (service.webhooks)
result_key         storage key of the result; result_content_type, result_frames, result_fps,
                   result_bytes describe it; result_credentials "1" when it carries C2PA credentials
=================  ==========================================================================

How long the hash lives is `job_lifetime_s(settings, status)`, the one rule the owner listing
(service.gateway.listing) also trims by: from its submission while the job is queued or running (the
hash expires at `created_at` plus that), from its end once settled (`result_ttl_s` when succeeded or
canceled, `failure_ttl_s` when failed).

Attempts are fenced: `claim_attempt` returns the attempt number, and a worker passes it to every
later transition (progress, heartbeat, succeed, fail, cancel, requeue), which is refused once a newer
attempt of the job started. A worker that was taken for dead but was only stalled can thus never
overwrite the progress or the outcome of the attempt that replaced it.

Events: every transition appends the job as it is after it (the hash without its payload) to the
job's stream ``{prefix}:events:{id}``, in the same script, as one typed event (`JobEventType`:
queued, started, progress, stalled, requeued, cancel_requested, succeeded, failed, canceled). The
stream keeps about `EVENTS_PER_JOB` of them and expires with the hash. It is produced once and
read by all: the gateways' event stream (GET /v1/jobs/{id}/events), the webhook dispatchers (jobs with
a webhook also get a line in ``{prefix}:webhooks:events``) and the metrics (each transition returns
its event, counted by `service.metrics.count_event`). Running jobs are in ``{prefix}:running``, scored
by their last heartbeat, where `flag_stalled` finds the attempts whose worker went silent.

Idempotency keys live at ``{prefix}:idem:{sha256(scope, key)}``; metrics at ``{prefix}:metrics``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
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

EVENTS_PER_JOB = 1000
"""About how many events a job's stream keeps (older ones are trimmed; each event is a full snapshot)."""
WEBHOOK_BACKLOG = 100_000
"""About how many events the webhook dispatchers' stream keeps for them to pick up."""

# Every script that changes a job takes KEYS[1] its hash, KEYS[2] its event stream, KEYS[3] the webhook
# event stream and KEYS[4] the running set; the last key that a script declares is its own (metrics).
_EMIT = (
    """
local job_id = string.match(KEYS[1], '[^:]+$')
-- Append the job as it is now (its hash without the payload) as event `kind` to its stream, which
-- expires with the hash; a job with a webhook also gets a line in the dispatchers' stream.
local function emit(kind)
  local flat = redis.call('HGETALL', KEYS[1])
  local fields = {'type', kind}
  local webhook = false
  for i = 1, #flat, 2 do
    if flat[i] ~= 'payload' then
      fields[#fields + 1] = flat[i]
      fields[#fields + 1] = flat[i + 1]
      if flat[i] == 'webhook' then webhook = true end
    end
  end
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', """
    + str(EVENTS_PER_JOB)
    + """, '*', unpack(fields))
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  if webhook then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', """
    + str(WEBHOOK_BACKLOG)
    + """, '*', 'job', job_id, 'event', id, 'type', kind)
  end
  return id
end
local function set_or_clear(name, value)
  if value == '' then redis.call('HDEL', KEYS[1], name) else redis.call('HSET', KEYS[1], name, value) end
end
-- End the job as `status` at `finished_at` with the extra fields `...`: the hash then lives `ttl` seconds.
local function settle(status, finished_at, ttl, ...)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', finished_at, ...)
  redis.call('HDEL', KEYS[1], 'eta_s', 'stalled')
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('ZREM', KEYS[4], job_id)
  emit(status)
end
local function superseded(attempt)
  return attempt ~= '' and redis.call('HGET', KEYS[1], 'attempts') ~= attempt
end
local attempt_fields = {'started_at', 'progress_at', 'heartbeat_at', 'worker', 'frames_total', 'phase',
  'phase_done', 'phase_total', 'fraction', 'eta_s', 'stalled'}
"""
)

_SUBMIT = (
    _EMIT
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return emit('queued')
"""
)

_CLAIM = (
    _EMIT
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'succeeded' or s == 'failed' or s == 'canceled' then return s end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  emit('canceled')
  return 'canceled'
end
redis.call('HDEL', KEYS[1], unpack(attempt_fields))
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'heartbeat_at', ARGV[1],
  'worker', ARGV[2], 'frames_done', 0)
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[4], ARGV[1], job_id)
emit('started')
return 'running:' .. attempt
"""
)

_PROGRESS = (
    _EMIT
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or superseded(ARGV[4]) then return -1 end
local before = tonumber(redis.call('HGET', KEYS[1], 'frames_done') or '0')
local done = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'frames_done', ARGV[1], 'progress_at', ARGV[3], 'heartbeat_at', ARGV[3])
set_or_clear('frames_total', ARGV[2])
for i = 5, #ARGV, 2 do set_or_clear(ARGV[i], ARGV[i + 1]) end
redis.call('HDEL', KEYS[1], 'stalled')
redis.call('ZADD', KEYS[4], ARGV[3], job_id)
if done > before then redis.call('HINCRBY', KEYS[5], 'frames', done - before) end
emit('progress')
return done - before
"""
)

_BEAT = (
    _EMIT
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or superseded(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[1], job_id)
if redis.call('HDEL', KEYS[1], 'stalled') == 1 then emit('progress') end
return 1
"""
)

_STALL = (
    _EMIT
    + """
local s, beat, stalled = unpack(redis.call('HMGET', KEYS[1], 'status', 'heartbeat_at', 'stalled'))
if s ~= 'running' then
  redis.call('ZREM', KEYS[4], job_id)
  return 0
end
if stalled == '1' or not beat or tonumber(beat) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'stalled', '1')
emit('stalled')
return 1
"""
)

_FINISH = (
    _EMIT
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'running' then return s or 'missing' end
if superseded(ARGV[4]) then return 'superseded' end
settle(ARGV[1], ARGV[2], ARGV[3], unpack(ARGV, 5))
return 'ok'
"""
)

_REQUEUE = (
    _EMIT
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or superseded(ARGV[1]) then return 0 end
redis.call('HDEL', KEYS[1], unpack(attempt_fields))
redis.call('HSET', KEYS[1], 'status', 'queued', 'frames_done', 0,
  'last_error_code', ARGV[2], 'last_error_message', ARGV[3])
redis.call('ZREM', KEYS[4], job_id)
emit('requeued')
return 1
"""
)

_CANCEL = (
    _EMIT
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'queued' then
  settle('canceled', ARGV[1], ARGV[2])
  return 'canceled'
end
if s == 'running' then
  if redis.call('HGET', KEYS[1], 'cancel_requested') ~= '1' then
    redis.call('HSET', KEYS[1], 'cancel_requested', '1')
    emit('cancel_requested')
  end
  return 'cancel_requested'
end
return 'ended:' .. s
"""
)

CancelOutcome = Literal["canceled", "cancel_requested", "succeeded", "failed", "missing"]
SETTLED = ("succeeded", "failed", "canceled")
"""The statuses a job ends in."""


_CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 10,
    "health_check_interval": 30,
}
"""How every client of ours talks to Redis: a short connect timeout, reads bounded, idle links checked."""


def _backoff() -> ExponentialBackoff:
    """Two quick retries (20 ms, then at most 250 ms apart)."""
    return ExponentialBackoff(cap=0.25, base=0.02)


def connect(settings: Settings) -> Redis:
    """A Redis client for the configured URL: short connect timeout, two quick retries."""
    return Redis.from_url(settings.redis_url, retry=RedisRetry(_backoff(), 2), **_CLIENT_OPTIONS)


def connect_async(settings: Settings) -> AsyncRedis:
    """An asyncio Redis client for the configured URL (the gateway's reads), set up as `connect`'s."""
    return AsyncRedis.from_url(settings.redis_url, retry=AsyncRetry(_backoff(), 2), **_CLIENT_OPTIONS)


def abandoned_after_s(settings: Settings) -> int:
    """Seconds without a heartbeat after which a running job counts as abandoned by its worker."""
    return settings.job_abandoned_after_s or 4 * settings.worker_heartbeat_s + 15


def stalled_after_s(settings: Settings) -> int:
    """Seconds without a heartbeat after which a running job is flagged stalled (two beats missed)."""
    return 2 * settings.worker_heartbeat_s + 2


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


def _optional(value: float | None) -> str:
    """A hash field's value, or "" for one the script clears."""
    return "" if value is None else str(value)


def queue_names(prefix: str) -> list[str]:
    """The RQ queue names, highest priority first."""
    return [f"{prefix}-{priority}" for priority in PRIORITIES]


def job_key(prefix: str, job_id: str) -> str:
    """The Redis key of a job's state hash."""
    return f"{prefix}:job:{job_id}"


def events_key(prefix: str, job_id: str) -> str:
    """The Redis key of a job's event stream."""
    return f"{prefix}:events:{job_id}"


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


@dataclass(frozen=True)
class PhaseProgress:
    """Where an attempt is: its phase (common.progress), `done` of `total` frames in it, and the
    worker's estimate of the whole attempt: the share done and the seconds left."""

    phase: str
    done: int
    total: int | None
    fraction: float
    eta_s: float | None


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
    result_credentials: bool = False
    heartbeat_at: float | None = None
    phase: str | None = None
    phase_done: int = 0
    phase_total: int | None = None
    fraction: float | None = None
    eta_s: float | None = None
    stalled: bool = False
    last_error_code: str | None = None
    last_error_message: str | None = None
    webhook: dict | None = None
    webhook_delivered: int = 0
    webhook_failed: int = 0
    webhook_pending: int = 0
    webhook_disabled: bool = False
    webhook_last_at: float | None = None
    webhook_last_status: int | None = None
    webhook_last_error: str | None = None

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[bytes | str, bytes | str]) -> JobRecord:
        """Decode the Redis hash of job `job_id` (on every read of a job: kept lean)."""
        f = {
            k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in raw.items()
        }

        def num(name: str) -> float | None:
            return float(f[name]) if f.get(name) not in (None, "") else None

        def whole(name: str) -> int | None:
            return int(f[name]) if f.get(name) not in (None, "") else None

        return cls(
            id=job_id,
            status=f.get("status", "queued"),
            priority=f.get("priority", "default"),  # type: ignore[arg-type]
            payload=orjson.loads(f.get("payload", "{}")),
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
            result_credentials=f.get("result_credentials") == "1",
            heartbeat_at=num("heartbeat_at"),
            phase=f.get("phase"),
            phase_done=int(f.get("phase_done") or 0),
            phase_total=whole("phase_total"),
            fraction=num("fraction"),
            eta_s=num("eta_s"),
            stalled=f.get("stalled") == "1",
            last_error_code=f.get("last_error_code") or None,
            last_error_message=f.get("last_error_message"),
            webhook=orjson.loads(f["webhook"]) if f.get("webhook") else None,
            webhook_delivered=int(f.get("webhook_delivered") or 0),
            webhook_failed=int(f.get("webhook_failed") or 0),
            webhook_pending=int(f.get("webhook_pending") or 0),
            webhook_disabled=f.get("webhook_disabled") == "1",
            webhook_last_at=num("webhook_last_at"),
            webhook_last_status=whole("webhook_last_status"),
            webhook_last_error=f.get("webhook_last_error"),
        )


StreamEntry = tuple[bytes, dict[bytes, bytes]]
"""An entry of a Redis stream as the client returns it: its id and its fields."""


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's stream: its id (a Redis stream id), its type and the job as it was then
    (without its payload)."""

    id: str
    type: str
    record: JobRecord

    @classmethod
    def from_entry(cls, job_id: str, entry: StreamEntry) -> JobEvent:
        """Decode an entry of the job's stream."""
        entry_id, fields = entry
        raw: dict[bytes | str, bytes | str] = {metrics.text(name): value for name, value in fields.items()}
        kind = metrics.text(raw.pop("type"))
        return cls(metrics.text(entry_id), kind, JobRecord.from_hash(job_id, raw))


def stream_entries(reply: Any) -> list[StreamEntry]:
    """The entries of an XRANGE or XREVRANGE reply (the client's types admit more than it returns)."""
    return cast(list[StreamEntry], reply)


def read_entries(reply: Any) -> list[StreamEntry]:
    """The entries of an XREAD or XREADGROUP reply, over all its streams (none when it timed out)."""
    streams = cast(list[tuple[bytes, list[StreamEntry]]], reply or [])
    return [entry for _, entries in streams for entry in entries]


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
        self.running_key = f"{self.prefix}:running"
        self.webhook_events_key = f"{self.prefix}:webhooks:events"
        self._submit = redis.register_script(_SUBMIT)
        self._claim = redis.register_script(_CLAIM)
        self._progress = redis.register_script(_PROGRESS)
        self._beat = redis.register_script(_BEAT)
        self._stall = redis.register_script(_STALL)
        self._finish = redis.register_script(_FINISH)
        self._requeue = redis.register_script(_REQUEUE)
        self._cancel = redis.register_script(_CANCEL)

    # keys
    def job_key(self, job_id: str) -> str:
        """The Redis key of a job's state hash."""
        return job_key(self.prefix, job_id)

    def _keys(self, job_id: str) -> list[str]:
        """The keys every transition script takes: hash, event stream, webhook stream, running set."""
        return [
            job_key(self.prefix, job_id),
            events_key(self.prefix, job_id),
            self.webhook_events_key,
            self.running_key,
        ]

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
        self,
        payload: JobPayload,
        priority: Priority,
        owner: str,
        *,
        created_at: float | None = None,
        webhook: Mapping[str, Any] | None = None,
    ) -> JobRecord:
        """Create the job's hash (owned by `owner`, with its `webhook` if any), emit its `queued`
        event and enqueue it on the queue of its priority.

        The hash expires `job_lifetime_s(settings, "queued")` after `created_at` (default: now).
        """
        job_id = payload.job_id
        now = time.time() if created_at is None else created_at
        payload_json = payload.model_dump(mode="json")
        fields: dict[str, str | int] = {
            "status": "queued",
            "priority": priority,
            "payload": json.dumps(payload_json, separators=(",", ":")),
            "created_at": repr(now),
            "owner": owner,
            "frames_done": 0,
            "attempts": 0,
        }
        if webhook is not None:
            fields["webhook"] = json.dumps(webhook, separators=(",", ":"))
        expire_at_ms = round((now + job_lifetime_s(self.settings, "queued")) * 1000)
        self._submit(keys=self._keys(job_id), args=[expire_at_ms, *itertools.chain(*fields.items())])
        metrics.count_event(self.redis, self.metrics_key, "queued")
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
            self.redis.delete(*self._keys(job_id)[:2])
            raise
        return JobRecord(
            id=job_id,
            status="queued",
            priority=priority,
            payload=payload_json,
            created_at=now,
            owner=owner,
            webhook=dict(webhook) if webhook is not None else None,
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
            keys=self._keys(job_id), args=[repr(now), job_lifetime_s(self.settings, "canceled")]
        ).decode()
        if outcome.startswith("ended:"):  # already finished (or canceled): nothing changes, nothing counted
            return cast(CancelOutcome, outcome.removeprefix("ended:"))
        if outcome == "canceled":
            metrics.count_event(self.redis, self.metrics_key, "canceled")
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
            keys=self._keys(job_id),
            args=[repr(now), worker_name, job_lifetime_s(self.settings, "canceled")],
        ).decode()
        attempt = 0
        if outcome.startswith("running:"):
            outcome, attempt = "running", int(outcome.partition(":")[2])
            record = self.get(job_id)
            with self.redis.pipeline() as pipe:
                metrics.count_event(pipe, self.metrics_key, "started")
                if record is not None:
                    metrics.observe(pipe, self.metrics_key, "wait", now - record.created_at)
                pipe.execute()
        elif outcome == "canceled":
            metrics.count_event(self.redis, self.metrics_key, "canceled")
        return outcome, attempt

    def progress(
        self,
        job_id: str,
        frames_done: int,
        frames_total: int | None,
        *,
        attempt: int | None = None,
        phase: PhaseProgress | None = None,
    ) -> None:
        """Record the frames rendered so far of a running job (of its attempt `attempt`, when given)
        and, when given, its `phase` and the estimate of the whole attempt; emits a progress event."""
        fields: list[str | int] = []
        if phase is not None:
            fields = [
                "phase",
                phase.phase,
                "phase_done",
                phase.done,
                "phase_total",
                _optional(phase.total),
                "fraction",
                repr(round(phase.fraction, 4)),
                "eta_s",
                _optional(None if phase.eta_s is None else round(phase.eta_s, 1)),
            ]
        self._progress(
            keys=[*self._keys(job_id), self.metrics_key],
            args=[frames_done, _optional(frames_total), repr(time.time()), _fence(attempt), *fields],
        )

    def heartbeat(self, job_id: str, *, attempt: int) -> bool:
        """The attempt `attempt` of a running job is alive (clears its stall flag); False once superseded."""
        return bool(self._beat(keys=self._keys(job_id), args=[repr(time.time()), attempt]))

    def flag_stalled(self, limit: int = 100) -> list[str]:
        """Flag the running jobs whose heartbeat is older than `stalled_after_s` (a stalled event each);
        returns their ids. Any gateway or worker may call it: a job is flagged once."""
        deadline = time.time() - stalled_after_s(self.settings)
        silent = self.redis.zrangebyscore(self.running_key, "-inf", deadline, start=0, num=limit)
        flagged = []
        for member in cast(list[bytes], silent):
            job_id = metrics.text(member)
            if self._stall(keys=self._keys(job_id), args=[repr(deadline)]):
                flagged.append(job_id)
        return flagged

    def events(self, job_id: str, after: str = "-") -> list[JobEvent]:
        """The job's events after the event id `after` (all of them by default), oldest first."""
        start = "-" if after == "-" else f"({after}"
        entries = stream_entries(self.redis.xrange(events_key(self.prefix, job_id), start))
        return [JobEvent.from_entry(job_id, entry) for entry in entries]

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
        content_credentials: bool = False,
        attempt: int | None = None,
    ) -> bool:
        """Mark a running job succeeded with its result (refused when `attempt` was superseded)."""
        fields: dict[str, str | int] = {
            "result_key": result_key,
            "result_content_type": content_type,
            "result_frames": frames,
            "result_fps": repr(float(fps)),
            "result_bytes": size_bytes,
            "result_credentials": int(content_credentials),
        }
        return self._end(job_id, "succeeded", fields, attempt)

    def fail(self, job_id: str, code: str, message: str, *, attempt: int | None = None) -> bool:
        """Mark a running job failed (refused when `attempt` was superseded)."""
        fields = {"error_code": code, "error_message": message}
        return self._end(job_id, "failed", fields, attempt)

    def mark_canceled(self, job_id: str, *, attempt: int | None = None) -> bool:
        """Mark a running job canceled (its worker stopped it; refused when `attempt` was superseded)."""
        return self._end(job_id, "canceled", {}, attempt)

    def requeue(self, job_id: str, code: str, message: str, *, attempt: int | None = None) -> bool:
        """Put a running job back to queued, before RQ retries it, with why its attempt was lost as its
        last error (refused when `attempt` was superseded)."""
        return bool(self._requeue(keys=self._keys(job_id), args=[_fence(attempt), code, message]))

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
        ended = self._finish(keys=self._keys(job_id), args=flat) == b"ok"
        if ended:
            record = self.get(job_id)
            with self.redis.pipeline() as pipe:
                metrics.count_event(pipe, self.metrics_key, status)
                if record is not None and record.started_at is not None:
                    metrics.observe(pipe, self.metrics_key, "run", now - record.started_at)
                pipe.execute()
        return ended


class JobReader:
    """The gateway's reads on redis.asyncio, one round trip each: a job, its latest event, its next events."""

    def __init__(self, redis: AsyncRedis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's state, or None if unknown (or expired)."""
        raw = await self.redis.hgetall(job_key(self.prefix, job_id))
        return JobRecord.from_hash(job_id, raw) if raw else None

    async def latest_event(self, job_id: str) -> JobEvent | None:
        """The job's last event, if its stream has any."""
        entries = stream_entries(await self.redis.xrevrange(events_key(self.prefix, job_id), count=1))
        return JobEvent.from_entry(job_id, entries[0]) if entries else None

    async def events_after(
        self, job_id: str, after: str, *, block_ms: int, count: int = 100
    ) -> list[JobEvent]:
        """Up to `count` events of the job after the event id `after`, waiting up to `block_ms` for one."""
        key = events_key(self.prefix, job_id)
        reply = await self.redis.xread({key: after}, count=count, block=block_ms)
        return [JobEvent.from_entry(job_id, entry) for entry in read_entries(reply)]
