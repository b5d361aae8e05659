"""Deleting a throwaway queue prefix from Redis (tests and bench/load.py run under their own prefixes)."""

from collections.abc import Iterable

import redis


def purge_prefix(redis_url: str, prefix: str, job_ids: Iterable[str] = ()) -> None:
    """Delete the keys of `prefix`: ours (`*prefix*`), RQ's keys of its jobs (those with a job hash
    under the prefix, and `job_ids`) and its queues' entries in `rq:queues`."""
    client = redis.Redis.from_url(redis_url)
    try:
        found = [key.decode().rsplit(":", 1)[1] for key in client.scan_iter(match=f"{prefix}:job:*")]
        patterns = [f"*{prefix}*", *(f"rq:*{job_id}*" for job_id in {*found, *job_ids})]
        for pattern in patterns:
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
        queues = [name for name in client.smembers("rq:queues") if prefix.encode() in name]
        if queues:
            client.srem("rq:queues", *queues)
    finally:
        client.close()
