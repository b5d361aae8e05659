"""What the routes share: settings, Redis (blocking and asyncio), the job queue, reader and index, the
store, signer, limiter, metrics."""

from dataclasses import dataclass

from fastapi import Request
from prometheus_client import CollectorRegistry
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from service.gateway.listing import JobIndex
from service.gateway.ratelimit import RateLimiter
from service.gateway.signing import UploadSigner
from service.queue import JobQueue, JobReader
from service.settings import Settings
from service.storage import Store


@dataclass
class Gateway:
    """The gateway's long-lived objects, one per app."""

    settings: Settings
    redis: Redis
    aredis: AsyncRedis
    queue: JobQueue
    reader: JobReader
    store: Store
    signer: UploadSigner
    registry: CollectorRegistry
    index: JobIndex
    limiter: RateLimiter | None

    def base_url(self, request: Request) -> str:
        """The public URL of the gateway, without a trailing slash."""
        return (self.settings.public_base_url or str(request.base_url)).rstrip("/")


async def get_gateway(request: Request) -> Gateway:
    """FastAPI dependency: the app's Gateway (async: no thread hop)."""
    return request.app.state.gateway
