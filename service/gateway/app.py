"""The FastAPI application factory and the gateway's entry point."""

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from common import __version__
from service.gateway.listing import JobIndex
from service.gateway.middleware import BodySizeLimitMiddleware
from service.gateway.ratelimit import RateLimiter
from service.gateway.routes import health, jobs, uploads
from service.gateway.signing import UploadSigner
from service.gateway.state import Gateway
from service.metrics import RedisMetricsCollector
from service.queue import JobQueue, connect
from service.settings import Settings, get_settings
from service.storage import StorageError, make_store
from service.tracing import TraceContextMiddleware


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway for `settings` (default: from the environment). Connections open lazily."""
    settings = settings or get_settings()
    client = connect(settings)
    queue = JobQueue(client, settings)
    secret = settings.signing_secret.get_secret_value().encode() if settings.signing_secret else None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisMetricsCollector.for_queue(queue))
    limit = settings.rate_limit_per_minute
    gateway = Gateway(
        settings=settings,
        redis=client,
        queue=queue,
        store=make_store(settings),
        signer=UploadSigner(secret or secrets.token_bytes(32)),
        registry=registry,
        index=JobIndex(client, queue, settings),
        limiter=RateLimiter(client, settings.queue_prefix, limit) if limit else None,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        client.close()

    app = FastAPI(
        title="LivePortrait animation service",
        version=__version__,
        summary="Animate a portrait with the motion of a driving video.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(TraceContextMiddleware)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "the job queue is unavailable; retry later"}, status_code=503)

    @app.exception_handler(StorageError)
    async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "storage is unavailable; retry later"}, status_code=503)

    app.include_router(jobs.router)
    app.include_router(uploads.router)
    app.include_router(health.router)

    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the models only referenced from hand-written request bodies."""
        if app.openapi_schema is None:
            schema = fastapi_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model_schema in jobs.extra_schemas().items():
                components.setdefault(name, model_schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(settings: Settings | None = None) -> None:
    """Run the gateway with uvicorn on settings.host:settings.port (`liveportrait gateway`)."""
    import uvicorn

    from service.logs import configure_logging

    settings = settings or get_settings()
    configure_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
    )
