"""Live sessions in Redis: workers advertise their live capacity, gateways reserve slots and hand out
single-use tokens, and both read the session's record.

Keys (prefix: `queue_prefix`):
- `{p}:live:workers`: sorted set of live worker names by last heartbeat (unix seconds);
- `{p}:live:worker:{name}`: hash of a worker's `address` (host:port), `slots` and `active`, expiring
  three heartbeats after the last one;
- `{p}:live:slots:{name}`: sorted set of the sessions holding a slot of that worker, by lease end
  (unix seconds). A reservation holds it for the token's life; the worker renews the leases of the
  sessions it runs at every heartbeat and removes a session when it ends. An expired lease (a
  gateway or a worker that died) frees its slot by itself.
- `{p}:live:session:{id}`: hash of a session (worker, address, owner, options, source key and digest,
  the relay token the worker checks, and the sha256 of the client's token while it is unused).

Choosing a worker and taking its slot is one Lua script, so two gateways never take the same slot.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import cast

from redis import Redis
from redis.typing import EncodableT, FieldT

from service.metrics import text
from service.settings import Settings

_RESERVE = """
local prefix, now, alive_after, session, lease = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. alive_after)
local best, best_free, best_address = nil, 0, nil
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local info = redis.call('HMGET', prefix .. ':live:worker:' .. name, 'address', 'slots')
  if info[1] and info[2] then
    local slots = prefix .. ':live:slots:' .. name
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
    local free = tonumber(info[2]) - redis.call('ZCARD', slots)
    if free > best_free then best, best_free, best_address = name, free, info[1] end
  end
end
if not best then return false end
redis.call('ZADD', prefix .. ':live:slots:' .. best, lease, session)
return {best, best_address}
"""

_CLAIM = """
local grant = redis.call('HMGET', KEYS[1], 'token', 'token_expires')
if not grant[1] or grant[1] ~= ARGV[1] or tonumber(grant[2]) < tonumber(ARGV[2]) then return false end
redis.call('HDEL', KEYS[1], 'token')
redis.call('ZREM', KEYS[2], ARGV[3])
return redis.call('HMGET', KEYS[1], 'worker', 'address', 'relay')
"""


SESSION_SOURCES = "live/"
"""Where in the store the gateway puts the sources it received for sessions (an upload stays where it is)."""

RELAY_HEADER = "X-LivePortrait-Relay"
"""The header a gateway sends the session's relay token in when it connects to the worker."""

RELAY_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest WebSocket message a gateway or a worker reads (larger ones close the connection with
1009; frames over `live_max_frame_bytes` but under this get an `error` and the session goes on)."""

_SESSION_PATH = re.compile(r"^/sessions/([0-9a-f]{32})$")


def worker_url(address: str, session_id: str) -> str:
    """The URL a gateway connects to for a session on the worker at `address` (host:port)."""
    return f"ws://{address}/sessions/{session_id}"


def session_id_of(path: str) -> str | None:
    """The session id of a worker URL's path, or None for any other path."""
    match = _SESSION_PATH.match(path)
    return match.group(1) if match else None


def session_source_key(session_id: str) -> str:
    """The store key of a session's source that the gateway received (multipart)."""
    return f"{SESSION_SOURCES}{session_id}/source"


def owns_source(key: str) -> bool:
    """Whether a session's source is the session's own (deleted with it), not a direct upload."""
    return key.startswith(SESSION_SOURCES)


def digest(token: str) -> str:
    """The sha256 hex digest of a token (Redis keeps digests only)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Reservation:
    """A slot taken on `worker` (reachable at `address`) for a session."""

    worker: str
    address: str


@dataclass(frozen=True)
class SessionRecord:
    """What a worker reads of a session it is asked to run."""

    session_id: str
    options: str
    source_key: str
    source_digest: str


@dataclass(frozen=True)
class Route:
    """Where a gateway relays a session whose token it claimed: the worker, its address, the relay token."""

    worker: str
    address: str
    relay_token: str


@dataclass(frozen=True)
class Capacity:
    """The live capacity of the workers alive: how many, their slots and the sessions they run."""

    workers: int
    slots: int
    active: int


class LiveRegistry:
    """Live workers, slots and sessions in Redis (one per process; the client is thread-safe)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        prefix = settings.queue_prefix
        self.prefix = prefix
        self.workers_key = f"{prefix}:live:workers"
        self.unclaimed_key = f"{prefix}:live:unclaimed"
        self._reserve = redis.register_script(_RESERVE)
        self._claim = redis.register_script(_CLAIM)

    @property
    def dead_after_s(self) -> float:
        """A worker whose last heartbeat is older than this is out of routing."""
        return 3 * self.settings.live_heartbeat_s

    def worker_key(self, name: str) -> str:
        return f"{self.prefix}:live:worker:{name}"

    def slots_key(self, name: str) -> str:
        return f"{self.prefix}:live:slots:{name}"

    def session_key(self, session_id: str) -> str:
        return f"{self.prefix}:live:session:{session_id}"

    # --- workers ----------------------------------------------------------------------------------

    def advertise(self, name: str, address: str, slots: int, sessions: list[str]) -> None:
        """A worker's heartbeat: its address, slots and running sessions (whose leases it renews)."""
        now = time.time()
        lease = now + self.dead_after_s
        with self.redis.pipeline() as pipe:
            pipe.hset(
                self.worker_key(name), mapping={"address": address, "slots": slots, "active": len(sessions)}
            )
            pipe.expire(self.worker_key(name), max(1, round(self.dead_after_s)))
            pipe.zadd(self.workers_key, {name: now})
            if sessions:
                pipe.zadd(self.slots_key(name), dict.fromkeys(sessions, lease), xx=True)
            pipe.execute()

    def withdraw(self, name: str) -> None:
        """A worker leaves: out of routing at once (its sessions are closed by the worker)."""
        with self.redis.pipeline() as pipe:
            pipe.zrem(self.workers_key, name)
            pipe.delete(self.worker_key(name), self.slots_key(name))
            pipe.execute()

    def capacity(self) -> Capacity:
        """The workers alive now, their slots and their running sessions."""
        since = time.time() - self.dead_after_s
        names = cast("list[bytes]", self.redis.zrangebyscore(self.workers_key, since, "+inf"))
        alive = [text(n) for n in names]
        if not alive:
            return Capacity(0, 0, 0)
        with self.redis.pipeline(transaction=False) as pipe:
            for name in alive:
                pipe.hmget(self.worker_key(name), "slots", "active")
            replies = pipe.execute()
        known = [(int(s), int(a)) for s, a in replies if s is not None and a is not None]
        return Capacity(len(known), sum(s for s, _ in known), sum(a for _, a in known))

    # --- sessions: the gateway ----------------------------------------------------------------------

    def reserve(self, session_id: str) -> Reservation | None:
        """Take a slot of the live worker with the most free slots for the token's life; None when no
        worker has one."""
        now = time.time()
        reply = self._reserve(
            keys=[self.workers_key],
            args=[
                self.prefix,
                now,
                now - self.dead_after_s,
                session_id,
                now + self.settings.live_token_ttl_s + 5,
            ],
        )
        if not reply:
            return None
        return Reservation(text(reply[0]), text(reply[1]))

    def create(
        self,
        session_id: str,
        reservation: Reservation,
        *,
        owner: str,
        options: str,
        source_key: str,
        source_digest: str,
    ) -> tuple[str, float]:
        """Record a reserved session; returns the client's single-use token and when it expires (unix s)."""
        token, relay = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = time.time() + self.settings.live_token_ttl_s
        key = self.session_key(session_id)
        record: dict[FieldT, EncodableT] = {
            "worker": reservation.worker,
            "address": reservation.address,
            "owner": owner,
            "options": options,
            "source_key": source_key,
            "source_digest": source_digest,
            "relay": relay,
            "token": digest(token),
            "token_expires": expires,
        }
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=record)
            pipe.expire(key, round(self.settings.live_token_ttl_s + self.settings.live_max_session_s + 60))
            pipe.zadd(self.unclaimed_key, {session_id: expires})
            pipe.execute()
        return token, expires

    def claim(self, session_id: str, token: str) -> Route | None:
        """Use a session's token (once, before it expires): where to relay it; None for a token that is
        wrong, expired or already used."""
        reply = self._claim(
            keys=[self.session_key(session_id), self.unclaimed_key],
            args=[digest(token), time.time(), session_id],
        )
        if not reply or any(part is None for part in reply):
            return None
        worker, address, relay = (text(part) for part in reply)
        return Route(worker, address, relay)

    def expired_grants(self) -> list[str]:
        """The source keys of the sessions whose token expired unused, their slots freed and records
        deleted; each is handed to one caller only (any worker's heartbeat asks), which deletes the source."""
        keys = []
        expired = cast("list[bytes]", self.redis.zrangebyscore(self.unclaimed_key, "-inf", time.time()))
        for session_id in (text(member) for member in expired):
            if not self.redis.zrem(self.unclaimed_key, session_id):
                continue  # another caller took it
            worker, key = self.redis.hmget(self.session_key(session_id), "worker", "source_key")
            if worker is not None:
                self.end(session_id, text(worker))
            if key is not None:
                keys.append(text(key))
        return keys

    def release(self, session_id: str, worker: str) -> None:
        """Free the session's slot (idempotent)."""
        self.redis.zrem(self.slots_key(worker), session_id)

    # --- sessions: the worker -----------------------------------------------------------------------

    def session(self, session_id: str, worker: str, relay_token: str) -> SessionRecord | None:
        """The record of a session this worker was chosen for, if `relay_token` is its relay token."""
        values = self.redis.hmget(
            self.session_key(session_id), "worker", "relay", "options", "source_key", "source_digest"
        )
        if any(v is None for v in values):
            return None
        owner, relay, options, source_key, source_digest = (text(v) for v in values)  # type: ignore[arg-type]
        if owner != worker or not hmac.compare_digest(relay, relay_token):
            return None
        return SessionRecord(session_id, options, source_key, source_digest)

    def end(self, session_id: str, worker: str) -> None:
        """A session ended on its worker: its slot is free and its record gone."""
        with self.redis.pipeline() as pipe:
            pipe.zrem(self.slots_key(worker), session_id)
            pipe.delete(self.session_key(session_id))
            pipe.execute()
