"""/v1/live/sessions: open a live session, and its WebSocket (relayed to the worker that runs it).

The logic is service.gateway.services.live; the protocol is docs/api.md's "Live sessions".
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, WebSocket
from starlette.concurrency import run_in_threadpool

from common.live import SessionGrant
from service.contract import ID_PATTERN
from service.gateway.auth import ApiScope
from service.gateway.problems import AUTHENTICATED, responses
from service.gateway.routes.http import MAX_JSON_BODY, answering, form_fields, reading_form
from service.gateway.services import UnsupportedMedia
from service.gateway.services import live as live_service
from service.gateway.state import Gateway, get_gateway
from service.live import LiveRegistry

router = APIRouter(prefix="/v1/live", tags=["live"])
GatewayDep = Annotated[Gateway, Depends(get_gateway)]

_REQUEST_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "source": {
                            "type": "string",
                            "format": "binary",
                            "description": "The portrait image.",
                        },
                        "upload_id": {
                            "type": "string",
                            "minLength": 1,
                            "description": "Instead of `source`: a direct upload.",
                        },
                        "options": {"type": "string", "description": "LiveOptions as JSON."},
                    },
                    "oneOf": [{"required": ["source"]}, {"required": ["upload_id"]}],
                }
            }
        },
    }
}


_RESPONSES = responses(*AUTHENTICATED, 413, 415, 422)
_RESPONSES[503]["description"] = (
    "No live worker has a free slot (retry after `Retry-After` seconds), or Redis or storage is unavailable."
)


def live_registry(request: Request) -> LiveRegistry:
    """The app's registry of live workers and sessions."""
    registry: LiveRegistry = request.app.state.live
    return registry


@router.post(
    "/sessions",
    operation_id="create_live_session",
    status_code=201,
    response_model=SessionGrant,
    summary="Open a live session (a WebSocket URL with a single-use token)",
    openapi_extra=_REQUEST_BODY_DOC,
    responses=_RESPONSES,
)
async def create_live_session(request: Request, gateway: GatewayDep, scope: ApiScope) -> SessionGrant:
    """A form: the file `source` (multipart) or a field `upload_id`, and optional `options` (LiveOptions
    as JSON).
    Connect to the answer's `websocket_url` within its token's life (docs/api.md, "Live sessions")."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    registry = live_registry(request)
    with answering():
        if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise UnsupportedMedia("send a form: multipart/form-data")
        async with reading_form(
            request, max_files=1, max_fields=len(live_service.FIELDS), max_part_size=MAX_JSON_BODY
        ) as form:
            try:
                return await run_in_threadpool(
                    live_service.open_session,
                    gateway,
                    registry,
                    form_fields(form),
                    scope,
                    gateway.base_url(request),
                )
            except live_service.NoLiveSlot as exc:
                raise HTTPException(
                    status_code=503, detail=str(exc), headers={"Retry-After": str(exc.retry_after_s)}
                ) from exc


@router.websocket("/sessions/{session_id}/ws")
async def live_session_socket(
    websocket: WebSocket,
    session_id: Annotated[str, Path(pattern=ID_PATTERN)],
    token: Annotated[str, Query(max_length=256)] = "",
) -> None:
    """The session's WebSocket: refused (403) without its valid, unused token; then relayed to its worker."""
    registry = live_registry(websocket)  # type: ignore[arg-type]
    route = await run_in_threadpool(registry.claim, session_id, token)
    if route is None:
        await websocket.close(code=1008, reason="invalid, expired or used token")
        return
    await websocket.accept()
    try:
        await live_service.relay(websocket, route, session_id)
    finally:
        await run_in_threadpool(registry.release, session_id, route.worker)
