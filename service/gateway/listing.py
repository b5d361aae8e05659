"""Each caller's jobs, newest first: a sorted set per owner, ``{prefix}:owner:{owner}``.

Members are job ids, scores their creation times. The gateway adds a job before it enqueues it
(and removes it again if the enqueue fails); entries whose job hash has expired are dropped when
a listing meets them, and entries older than any job can live are trimmed on every add. How long
that is comes from the queue's one rule, `service.queue.job_lifetime_s`: an entry expires with the
hash of its job created at the same time, `job_lifetime_s(settings, "queued")` after its score.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from service.queue import JobQueue, JobRecord, job_lifetime_s
from service.settings import Settings

CURSOR_PATTERN = r"^\d{1,12}(\.\d{1,9})?~[0-9a-f]{32}$"
"""A page cursor: the creation time (seconds) and id of the last job of the page before."""
_CURSOR = re.compile(CURSOR_PATTERN)


class BadCursor(ValueError):
    """A `cursor` that is not of the form a listing hands out."""


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the creation time and id of its last job."""

    created_at: float
    job_id: str

    def encode(self) -> str:
        """The string form handed to clients (`CURSOR_PATTERN`, so the spec says what is accepted)."""
        return f"{self.created_at:.6f}~{self.job_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse a cursor of the form `encode` makes; BadCursor otherwise."""
        if _CURSOR.match(text) is None:
            raise BadCursor("malformed cursor")
        created_at, job_id = text.split("~")
        return cls(float(created_at), job_id)


class JobIndex:
    """Add jobs to their owner's index (blocking client) and page through it (asyncio client)."""

    def __init__(self, redis: Redis, aredis: AsyncRedis, queue: JobQueue, settings: Settings) -> None:
        self.redis = redis
        self.aredis = aredis
        self.queue = queue
        self._prefix = f"{settings.queue_prefix}:owner"
        self.lifetime_s = job_lifetime_s(settings, "queued")
        """How long after its creation time an entry is kept (as long as its job can live)."""

    def _key(self, owner: str) -> str:
        return f"{self._prefix}:{owner}"

    def add(self, owner: str, job_id: str, created_at: float) -> None:
        """Index a job (call before enqueueing it)."""
        key = self._key(owner)
        with self.redis.pipeline() as pipe:
            pipe.zadd(key, {job_id: round(created_at, 6)})
            pipe.zremrangebyscore(key, "-inf", f"({time.time() - self.lifetime_s}")
            pipe.expire(key, self.lifetime_s)
            pipe.execute()

    def expires_at(self, owner: str, job_id: str) -> float | None:
        """When the owner's entry of the job is trimmed (epoch seconds), or None if it is not indexed."""
        score = self.redis.zscore(self._key(owner), job_id)
        return None if score is None else float(score) + self.lifetime_s

    def remove(self, owner: str, job_id: str) -> None:
        """Unindex a job that was never enqueued."""
        self.redis.zrem(self._key(owner), job_id)

    async def page(
        self, owner: str, limit: int, cursor: Cursor | None
    ) -> tuple[list[JobRecord], Cursor | None]:
        """Up to `limit` of the owner's jobs older than `cursor`, newest first, and the next cursor."""
        key = self._key(owner)
        records: list[JobRecord] = []
        position = cursor
        while len(records) < limit:
            batch = await self._ids_after(key, position, limit - len(records))
            if not batch:
                return records, None
            async with self.aredis.pipeline(transaction=False) as pipe:
                for job_id, _ in batch:
                    pipe.hgetall(self.queue.job_key(job_id))
                hashes = await pipe.execute()
            gone = []
            for (job_id, _), raw in zip(batch, hashes, strict=True):
                if not raw:
                    gone.append(job_id)
                    continue
                record = JobRecord.from_hash(job_id, raw)
                if record.owner == owner:
                    records.append(record)
            if gone:
                await self.aredis.zrem(key, *gone)
            position = Cursor(batch[-1][1], batch[-1][0])
        more = bool(await self._ids_after(key, position, 1))
        return records, position if more else None

    async def _ids_after(self, key: str, cursor: Cursor | None, count: int) -> list[tuple[str, float]]:
        """The next `count` (id, score) pairs after `cursor` in newest-first order.

        Jobs with the same score are ordered by id, descending, as ZREVRANGEBYSCORE returns them.
        """
        if cursor is None:
            rows = await self.aredis.zrevrangebyscore(
                key, "+inf", "-inf", start=0, num=count, withscores=True
            )
        else:
            ties = int(await self.aredis.zcount(key, cursor.created_at, cursor.created_at))
            rows = await self.aredis.zrevrangebyscore(
                key, cursor.created_at, "-inf", start=0, num=count + ties, withscores=True
            )
        # withscores=True gives (member, score) pairs; the client's return type does not follow the flag
        pairs = [(member.decode(), float(score)) for member, score in cast(list[tuple[bytes, float]], rows)]
        if cursor is not None:
            pairs = [
                (job_id, score)
                for job_id, score in pairs
                if score < cursor.created_at or (score == cursor.created_at and job_id < cursor.job_id)
            ]
        return pairs[:count]
