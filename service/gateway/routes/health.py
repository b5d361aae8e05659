"""Liveness, readiness and Prometheus metrics."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.gateway.state import Gateway, get_gateway

router = APIRouter(tags=["health"])
GatewayDep = Annotated[Gateway, Depends(get_gateway)]


@router.get("/healthz", operation_id="healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness: Redis and storage reachable",
    responses={503: {"description": "Redis or storage unreachable."}},
)
def readyz(gateway: GatewayDep) -> JSONResponse:
    """200 when Redis answers and the store is usable, else 503 naming what failed."""
    checks: dict[str, str] = {}
    try:
        gateway.queue.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        gateway.store.check()
        checks["storage"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["storage"] = f"error: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/metrics", operation_id="metrics", summary="Prometheus metrics", response_class=Response)
def metrics(gateway: GatewayDep) -> Response:
    """Job counters by status, queue depths, wait and run time histograms, frames processed."""
    return Response(generate_latest(gateway.registry), media_type=CONTENT_TYPE_LATEST)
