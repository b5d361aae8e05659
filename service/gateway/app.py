"""The FastAPI application factory and the gateway's entry point.

Besides the routes, each gateway runs two tasks while it serves: one flags running jobs whose worker
went silent (`JobQueue.flag_stalled`, every second), one is a webhook dispatcher (service.webhooks;
unless `webhook_dispatcher` is off).
"""

import asyncio
import contextlib
import gc
import logging
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from common import __version__
from service.gateway import docs, page, problems
from service.gateway.listing import JobIndex
from service.gateway.middleware import BodySizeLimitMiddleware
from service.gateway.openapi import complete_spec
from service.gateway.ratelimit import RateLimiter
from service.gateway.routes import health, jobs, live, uploads
from service.gateway.services.jobs import job_view
from service.gateway.signing import UploadSigner
from service.gateway.state import Gateway
from service.live import LiveRegistry
from service.metrics import LiveMetricsCollector, RedisMetricsCollector
from service.queue import JobQueue, JobReader, connect, connect_async
from service.settings import Settings, get_settings
from service.storage import make_store
from service.tracing import TraceContextMiddleware
from service.webhooks import WebhookDispatcher

log = structlog.get_logger("gateway")
STALL_CHECK_S = 1.0
"""How often a gateway looks for running jobs whose heartbeat stopped."""


class QuietPolls(logging.Filter):
    """Access lines of successful job reads (GET /v1/jobs/{id} answering 200 or 304) only at DEBUG:
    polling clients make most of a gateway's requests, and a line costs a fifth of a read."""

    _POLL = re.compile(r"^/v1/jobs/[0-9a-f]{32}$")

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a poll's access line (uvicorn's args: client, method, path, version, status)."""
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5 or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        _, method, path, _, status = args
        return not (method == "GET" and status in (200, 304) and self._POLL.match(str(path)))


async def watch_stalls(queue: JobQueue) -> None:
    """Flag stalled jobs every STALL_CHECK_S until cancelled (each job once, whichever gateway sees it)."""
    while True:
        try:
            await asyncio.to_thread(queue.flag_stalled)
        except redis.exceptions.RedisError as exc:
            log.warning("jobs.stall_check_failed", error=str(exc))
        await asyncio.sleep(STALL_CHECK_S)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway for `settings` (default: from the environment). Connections open lazily."""
    settings = settings or get_settings()
    client = connect(settings)
    aclient = connect_async(settings)
    queue = JobQueue(client, settings)
    secret = settings.signing_secret.get_secret_value().encode() if settings.signing_secret else None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisMetricsCollector.for_queue(queue))
    live_registry = LiveRegistry(client, settings)
    registry.register(LiveMetricsCollector(client, queue.metrics_key, live_registry.capacity))
    limit = settings.rate_limit_per_minute
    gateway = Gateway(
        settings=settings,
        redis=client,
        aredis=aclient,
        queue=queue,
        reader=JobReader(aclient, settings.queue_prefix),
        store=make_store(settings),
        signer=UploadSigner(secret or secrets.token_bytes(32)),
        registry=registry,
        index=JobIndex(client, aclient, queue, settings),
        limiter=RateLimiter(aclient, settings.queue_prefix, limit) if limit else None,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(watch_stalls(queue), name="stall-watch")]
        if settings.webhook_dispatcher:
            dispatcher = WebhookDispatcher(aclient, settings, job_view)
            tasks.append(asyncio.create_task(dispatcher.run(), name="webhook-dispatcher"))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await aclient.aclose()
        client.close()

    app = FastAPI(
        title="LivePortrait animation service",
        version=__version__,
        summary="Animate a portrait with the motion of a driving video.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    app.state.live = live_registry
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(TraceContextMiddleware)
    problems.install(app)
    docs.install(app)
    page.install(app)

    app.router.routes[:0] = jobs.read_routes
    app.include_router(jobs.router)
    app.include_router(uploads.router)
    app.include_router(live.router)
    app.include_router(health.router)

    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, completed to say what the gateway enforces (service.gateway.openapi)."""
        if app.openapi_schema is None:
            app.openapi_schema = complete_spec(fastapi_openapi(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(settings: Settings | None = None) -> None:
    """Run the gateway with uvicorn on settings.host:settings.port (`liveportrait gateway`)."""
    import uvicorn

    from service.logs import configure_logging

    settings = settings or get_settings()
    configure_logging(settings)
    logging.getLogger("uvicorn.access").addFilter(QuietPolls())
    app = create_app(settings)
    gc.freeze()  # what was loaded to start is never garbage: the collector's full passes skip it (p99)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
        loop="uvloop",
        http="httptools",
    )
