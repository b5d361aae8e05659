"""Per-caller request limits shared by every gateway: a sliding-window counter in Redis.

Each caller has one counter per minute, ``{prefix}:ratelimit:{caller}:{minute}``. A request is
allowed while ``previous minute's count x (share of the previous minute still in the window) +
this minute's count`` stays within the limit. Redis's clock decides the minute, so gateways with
skewed clocks still share one window, and the check and the increment are one atomic script.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis

WINDOW_S = 60

_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = math.floor(now / 60)
local elapsed = now - window * 60
local current_key = KEYS[1] .. ':' .. window
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (window - 1)) or '0')
local current = tonumber(redis.call('GET', current_key) or '0')
local limit = tonumber(ARGV[1])
local weight = (60 - elapsed) / 60
if previous * weight + current + 1 <= limit then
  redis.call('INCR', current_key)
  redis.call('EXPIRE', current_key, 120)
  return {1, tostring(limit - previous * weight - current - 1)}
end
local wait
if current + 1 > limit then
  wait = (60 - elapsed) + 60 * math.max(0, 1 - (limit - 1) / current)
else
  wait = 60 * (1 - (limit - 1 - current) / previous) - elapsed
end
return {0, tostring(wait)}
"""


@dataclass(frozen=True)
class Decision:
    """Whether a request may go on; if not, how many seconds until it may (Retry-After)."""

    allowed: bool
    remaining: int
    retry_after_s: int


class RateLimiter:
    """`limit` requests per minute per caller, counted in Redis under `prefix`."""

    def __init__(self, redis: AsyncRedis, prefix: str, limit: int) -> None:
        self.limit = limit
        self._prefix = f"{prefix}:ratelimit"
        self._script = redis.register_script(_SLIDING_WINDOW)

    async def hit(self, caller: str) -> Decision:
        """Count one request of `caller` if it is within the limit (one round trip)."""
        allowed, value = await self._script(keys=[f"{self._prefix}:{caller}"], args=[self.limit])
        number = float(value)
        if allowed:
            return Decision(True, max(0, math.floor(number)), 0)
        return Decision(False, 0, max(1, math.ceil(number)))
