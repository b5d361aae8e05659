"""Liveness, readiness and Prometheus metrics."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.gateway.problems import problem_response, responses
from service.gateway.state import Gateway, get_gateway

router = APIRouter(tags=["health"])
GatewayDep = Annotated[Gateway, Depends(get_gateway)]
_NOT_READY = responses(503)
_NOT_READY[503]["description"] = (
    "Redis or storage unreachable: `checks` says which (a problem with that member)."
)


@router.get("/healthz", operation_id="healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness: Redis and storage reachable",
    responses=_NOT_READY,
)
def readyz(request: Request, gateway: GatewayDep) -> Response:
    """200 when Redis answers and the store is usable, else a 503 problem whose `checks` name what failed."""
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
    failed = [name for name, value in checks.items() if value != "ok"]
    if failed:
        detail = f"not ready: {', '.join(f'{name} {checks[name]}' for name in failed)}"
        return problem_response(request.url.path, 503, detail, extensions={"checks": checks})
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", operation_id="metrics", summary="Prometheus metrics", response_class=Response)
def metrics(gateway: GatewayDep) -> Response:
    """Job counters by status, queue depths, wait and run time histograms, frames processed."""
    return Response(generate_latest(gateway.registry), media_type=CONTENT_TYPE_LATEST)
