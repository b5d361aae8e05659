"""Webhooks: a job's events POSTed to its URL, signed as Standard Webhooks specifies, at least once.

A delivery is `POST url` with the JSON body ``{"type": "job.<event>", "timestamp": ..., "data": job}``
and the headers ``webhook-id`` (the same on every retry of a delivery), ``webhook-timestamp`` (epoch
seconds of the attempt) and ``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256(secret,
``{id}.{timestamp}.{body}``), the secret being `LIVEPORTRAIT_WEBHOOK_SECRET` (``whsec_`` + base64).

The dispatcher is a component of its own, apart from rendering: an asyncio task in each gateway
(`webhook_dispatcher`, on by default) or `liveportrait webhooks`. The job events come from the
one place every transition writes them (service.queue): a job with a webhook has each event also
written to ``{prefix}:webhooks:events``, which all dispatchers read as one Redis consumer group (each
line once). What they turn it into lives in Redis too, so any dispatcher sends and retries any delivery:

========================================  ====================================================
``{prefix}:webhooks:queue:{job}``         the job's deliveries not done yet, oldest first
``{prefix}:webhooks:delivery:{id}``       one delivery: job, event id, type, attempts, first try
``{prefix}:webhooks:due``                 the head delivery of each job, scored by when to try it
========================================  ====================================================

A job's deliveries go out one at a time, in order. A job.progress delivery goes no sooner than
`webhook_progress_interval_s` after the job's previous one was sent, and a newer progress replaces one still
waiting (so a receiver gets at most ~2 a second per job, and the latest state). A failed attempt
(no answer, 5xx, 408, 425, 429, a redirect) is retried after `webhook_retry_base_s` doubled per
attempt (at most `webhook_retry_max_delay_s`, times a random 0.5 to 1) for `webhook_retry_window_s`;
any other 4xx gives the delivery up, and 410 Gone also stops every later one of the job. The URL
is checked before every attempt with the rules of URL inputs (service.urls). How it went is kept on
the job: `webhook_delivered`, `webhook_pending`, `webhook_failed`, `webhook_disabled` and the last
attempt's time, status and error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson
import redis
import structlog
from redis.asyncio import Redis as AsyncRedis

from service.contract import Job, WebhookEventType
from service.metrics import text
from service.queue import (
    JobEvent,
    JobReader,
    JobRecord,
    connect_async,
    events_key,
    job_key,
    read_entries,
    stream_entries,
)
from service.settings import Settings
from service.urls import UnsafeURL, check_url

log = structlog.get_logger("webhooks")

GROUP = "dispatchers"
"""The consumer group of all dispatchers on the webhook event stream."""
LEASE_S = 60.0
"""How long a delivery being sent is withheld from the other dispatchers (then it is tried again)."""
RETRYABLE_4XX = frozenset({408, 425, 429})

JobView = Callable[[JobRecord, str], Job]
"""How a job is shown (service.gateway.services.jobs.job_view): a record and the public base URL."""

WEBHOOK_TYPES: dict[str, WebhookEventType] = {
    "started": "job.started",
    "progress": "job.progress",
    "stalled": "job.progress",
    "requeued": "job.progress",
    "cancel_requested": "job.progress",
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "canceled": "job.canceled",
}
"""The webhook type of each job event (a queued job has none to send)."""

# KEYS: job hash, job's delivery queue, due set. ARGV: delivery key prefix, id, event id, type, now,
# progress interval, key lifetime. A progress or final event replaces the progress deliveries that
# wait (a progress one takes the place of the one it replaces, keeping its schedule and attempts).
_ENQUEUE = """
local function key(id) return ARGV[1] .. id end
local now = tonumber(ARGV[5])
local hook, disabled = unpack(redis.call('HMGET', KEYS[1], 'webhook', 'webhook_disabled'))
if not hook or disabled == '1' or redis.call('EXISTS', key(ARGV[2])) == 1 then return 0 end
local not_before, created, attempts, replaced = now, ARGV[5], 0, false
local final = ARGV[4] == 'job.succeeded' or ARGV[4] == 'job.failed' or ARGV[4] == 'job.canceled'
if ARGV[4] == 'job.progress' or final then
  for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    local kind, lease = unpack(redis.call('HMGET', key(id), 'type', 'leased_until'))
    if kind == 'job.progress' and tonumber(lease or '0') <= now then
      local due = redis.call('ZSCORE', KEYS[3], id) or redis.call('HGET', key(id), 'not_before')
      not_before = math.max(not_before, tonumber(due or ARGV[5]))
      created = redis.call('HGET', key(id), 'created_at') or created
      attempts = tonumber(redis.call('HGET', key(id), 'attempts') or '0')
      replaced = true
      redis.call('LREM', KEYS[2], 1, id)
      redis.call('ZREM', KEYS[3], id)
      redis.call('DEL', key(id))
      redis.call('HINCRBY', KEYS[1], 'webhook_pending', -1)
    end
  end
end
if final then
  not_before, created, attempts = now, ARGV[5], 0
elseif ARGV[4] == 'job.progress' and not replaced then
  local last = tonumber(redis.call('HGET', KEYS[1], 'webhook_progress_at') or '0')
  not_before = math.max(now, last + tonumber(ARGV[6]))
end
redis.call('HSET', key(ARGV[2]), 'job', string.match(KEYS[1], '[^:]+$'), 'event', ARGV[3],
  'type', ARGV[4], 'attempts', attempts, 'created_at', created, 'not_before', not_before,
  'leased_until', 0)
redis.call('EXPIRE', key(ARGV[2]), ARGV[7])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('HINCRBY', KEYS[1], 'webhook_pending', 1)
local head = redis.call('LINDEX', KEYS[2], 0)
if redis.call('ZSCORE', KEYS[3], head) == false then
  redis.call('ZADD', KEYS[3], redis.call('HGET', key(head), 'not_before'), head)
end
return 1
"""

# KEYS: due set. ARGV: delivery key prefix, now, lease, limit. Leases the due deliveries.
_LEASE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local until_ = tonumber(ARGV[2]) + tonumber(ARGV[3])
local leased = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    redis.call('ZADD', KEYS[1], until_, id)
    redis.call('HSET', ARGV[1] .. id, 'leased_until', until_)
    leased[#leased + 1] = id
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return leased
"""

# KEYS: job hash, job's delivery queue, due set. ARGV: delivery key prefix, id, outcome (delivered,
# refused, gone, retry), now, next attempt time, HTTP status ('' for none), error, key lifetime,
# progress interval. The next job.progress of the job goes no sooner than that after this one.
_SETTLE = """
local function key(id) return ARGV[1] .. id end
local job = redis.call('EXISTS', KEYS[1]) == 1
if job then
  if redis.call('HGET', key(ARGV[2]), 'type') == 'job.progress' then
    redis.call('HSET', KEYS[1], 'webhook_progress_at', ARGV[4])
  end
  redis.call('HSET', KEYS[1], 'webhook_last_at', ARGV[4], 'webhook_last_error', ARGV[7])
  if ARGV[6] == '' then redis.call('HDEL', KEYS[1], 'webhook_last_status')
  else redis.call('HSET', KEYS[1], 'webhook_last_status', ARGV[6]) end
end
if ARGV[3] == 'retry' then
  redis.call('HINCRBY', key(ARGV[2]), 'attempts', 1)
  redis.call('HSET', key(ARGV[2]), 'leased_until', 0)
  redis.call('EXPIRE', key(ARGV[2]), ARGV[8])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
  return 1
end
local dropped = {ARGV[2]}
if ARGV[3] == 'gone' then dropped = redis.call('LRANGE', KEYS[2], 0, -1) end
for _, id in ipairs(dropped) do
  redis.call('LREM', KEYS[2], 1, id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('DEL', key(id))
end
if job then
  redis.call('HINCRBY', KEYS[1], 'webhook_pending', -#dropped)
  if ARGV[3] == 'delivered' then redis.call('HINCRBY', KEYS[1], 'webhook_delivered', 1)
  else redis.call('HINCRBY', KEYS[1], 'webhook_failed', #dropped) end
  if ARGV[3] == 'gone' then redis.call('HSET', KEYS[1], 'webhook_disabled', '1') end
end
local head = redis.call('LINDEX', KEYS[2], 0)
if head then
  local kind, not_before = unpack(redis.call('HMGET', key(head), 'type', 'not_before'))
  local due = math.max(tonumber(not_before or ARGV[4]), tonumber(ARGV[4]))
  if kind == 'job.progress' then
    local last = tonumber(redis.call('HGET', KEYS[1], 'webhook_progress_at') or '0')
    due = math.max(due, last + tonumber(ARGV[9]))
  end
  redis.call('ZADD', KEYS[3], due, head)
end
return 1
"""


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header of a delivery: ``v1,`` + base64(HMAC-SHA256 of id.timestamp.body)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


def secret_bytes(settings: Settings) -> bytes | None:
    """The key of `webhook_secret` (the base64 after ``whsec_``), or None when it is unset."""
    if settings.webhook_secret is None:
        return None
    return base64.b64decode(settings.webhook_secret.get_secret_value().removeprefix("whsec_"))


@dataclass(frozen=True)
class Outcome:
    """How an attempt went: delivered, refused (4xx), gone (410) or retry; the status and error seen."""

    kind: str
    status: int | None = None
    error: str = ""


def classify(status: int) -> str:
    """The outcome of an answer with HTTP `status`."""
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "gone"
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        return "refused"
    return "retry"


def retry_delay_s(settings: Settings, attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: exponential, capped, with jitter."""
    delay = min(settings.webhook_retry_max_delay_s, settings.webhook_retry_base_s * 2 ** (attempts - 1))
    return delay * random.uniform(0.5, 1.0)


class WebhookDispatcher:
    """Turns job events into deliveries and sends them; any number of them share the work."""

    def __init__(self, redis: AsyncRedis, settings: Settings, view: JobView, *, concurrency: int = 8) -> None:
        self.redis = redis
        self.settings = settings
        self.view = view
        self.reader = JobReader(redis, settings.queue_prefix)
        self.concurrency = concurrency
        prefix = settings.queue_prefix
        self.events_key = f"{prefix}:webhooks:events"
        self.due_key = f"{prefix}:webhooks:due"
        self.delivery_prefix = f"{prefix}:webhooks:delivery:"
        self.queue_prefix = f"{prefix}:webhooks:queue:"
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lifetime_s = settings.webhook_retry_window_s + 3600
        self._enqueue = redis.register_script(_ENQUEUE)
        self._lease = redis.register_script(_LEASE)
        self._settle = redis.register_script(_SETTLE)
        self._secret = secret_bytes(settings)
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Take in events and send deliveries until cancelled; Redis outages are waited out."""
        try:
            await asyncio.gather(self._forever(self.take_in), self._forever(self.send_due))
        finally:
            for task in self._sending:
                task.cancel()

    @staticmethod
    async def _forever(step: Callable[[], Awaitable[int]]) -> None:
        while True:
            try:
                if not await step():
                    await asyncio.sleep(0.1)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("webhooks.redis_unavailable", error=str(exc))
                await asyncio.sleep(1.0)

    def _keys(self, job_id: str) -> list[str]:
        """The keys of the delivery scripts: the job's hash, its delivery queue, the due set."""
        return [job_key(self.settings.queue_prefix, job_id), self.queue_prefix + job_id, self.due_key]

    async def take_in(self, block_ms: int = 1000) -> int:
        """Read new job events (and those a dead dispatcher left unacknowledged) into deliveries."""
        with contextlib.suppress(redis.exceptions.ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(self.events_key, GROUP, id="0", mkstream=True)
        claimed = await self.redis.xautoclaim(
            self.events_key, GROUP, self.consumer, min_idle_time=int(LEASE_S * 1000), count=100
        )
        fresh = await self.redis.xreadgroup(
            GROUP, self.consumer, {self.events_key: ">"}, count=100, block=block_ms
        )
        entries = stream_entries(claimed[1]) + read_entries(fresh)
        for entry_id, fields in entries:
            values = {text(name): text(value) for name, value in fields.items()}
            await self._deliver_later(values["job"], values["event"], values["type"])
            await self.redis.xack(self.events_key, GROUP, entry_id)
        return len(entries)

    async def _deliver_later(self, job_id: str, event_id: str, event_type: str) -> None:
        kind = WEBHOOK_TYPES.get(event_type)
        if kind is None:
            return
        record = await self.reader.get(job_id)
        if record is None or record.webhook is None or kind not in record.webhook.get("events", ()):
            return
        await self._enqueue(
            keys=self._keys(job_id),
            args=[
                self.delivery_prefix,
                f"{job_id}.{event_id}",
                event_id,
                kind,
                repr(time.time()),
                self.settings.webhook_progress_interval_s,
                self.lifetime_s,
            ],
        )

    async def send_due(self) -> int:
        """Start sending the deliveries that are due (one at a time per job); returns how many."""
        free = self.concurrency - len(self._sending)
        if free <= 0:
            return 0
        ids = await self._lease(keys=[self.due_key], args=[self.delivery_prefix, time.time(), LEASE_S, free])
        for raw in ids:
            task = asyncio.create_task(self._send(text(raw)))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return len(ids)

    async def _send(self, delivery_id: str) -> None:
        try:
            raw = await self.redis.hgetall(self.delivery_prefix + delivery_id)
            delivery = {text(k): text(v) for k, v in raw.items()}
            if not delivery:  # expired while due: forget it
                await self.redis.zrem(self.due_key, delivery_id)
                return
            job_id, attempts = delivery["job"], int(delivery["attempts"]) + 1
            outcome = await self._attempt(delivery_id, delivery)
            next_at = time.time()
            if outcome.kind == "retry":
                next_at += retry_delay_s(self.settings, attempts)
                if next_at - float(delivery["created_at"]) > self.settings.webhook_retry_window_s:
                    error = f"given up after {attempts} attempts: {outcome.error}"
                    outcome = Outcome("refused", outcome.status, error)
            log.info(
                "webhook.attempt",
                job_id=job_id,
                delivery=delivery_id,
                type=delivery["type"],
                attempt=attempts,
                outcome=outcome.kind,
                status=outcome.status,
            )
            await self._settle(
                keys=self._keys(job_id),
                args=[
                    self.delivery_prefix,
                    delivery_id,
                    outcome.kind,
                    repr(time.time()),
                    repr(next_at),
                    "" if outcome.status is None else outcome.status,
                    outcome.error[:500],
                    self.lifetime_s,
                    self.settings.webhook_progress_interval_s,
                ],
            )
        except redis.exceptions.RedisError as exc:  # the lease runs out and the delivery is tried again
            log.warning("webhook.not_settled", delivery=delivery_id, error=str(exc))

    async def _attempt(self, delivery_id: str, delivery: dict[str, str]) -> Outcome:
        """One POST of the delivery, signed; what came of it."""
        job_id = delivery["job"]
        record = await self.reader.get(job_id)
        entries = stream_entries(
            await self.redis.xrange(
                events_key(self.settings.queue_prefix, job_id), delivery["event"], delivery["event"]
            )
        )
        if record is None or record.webhook is None or not entries:
            return Outcome("refused", None, "the job or its event expired")
        if self._secret is None:
            return Outcome("retry", None, "LIVEPORTRAIT_WEBHOOK_SECRET is not set")
        body = self.body(delivery["type"], JobEvent.from_entry(job_id, entries[0]), record.payload)
        url = str(record.webhook["url"])
        try:
            await asyncio.to_thread(
                check_url, url, allow_private=self.settings.allow_private_urls, s3_buckets=[]
            )
        except UnsafeURL as exc:
            return Outcome("refused", None, f"the URL was refused: {exc}")
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, delivery_id, timestamp, body),
        }
        try:
            async with httpx.AsyncClient(
                timeout=self.settings.webhook_timeout_s, follow_redirects=False, trust_env=False
            ) as client:
                response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}")
        kind = classify(response.status_code)
        return Outcome(
            kind, response.status_code, "" if kind == "delivered" else f"HTTP {response.status_code}"
        )

    def body(self, kind: str, event: JobEvent, payload: dict) -> bytes:
        """The delivery's body: its type, the event's time and the job as it was then."""
        job = self.view(
            dataclasses.replace(event.record, payload=payload), self.settings.public_base_url or ""
        )
        millis = int(event.id.split("-", 1)[0])
        timestamp = datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
        return orjson.dumps({"type": kind, "timestamp": timestamp, "data": job.model_dump(mode="json")})


async def serve(settings: Settings, view: JobView) -> None:
    """Run a dispatcher until cancelled (`liveportrait webhooks`)."""
    client = connect_async(settings)
    try:
        await WebhookDispatcher(client, settings, view).run()
    finally:
        await client.aclose()
