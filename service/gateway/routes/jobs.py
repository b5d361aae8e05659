"""/v1/jobs: submit (multipart files or JSON references), list, inspect, cancel, fetch the result.

The routes parse the HTTP request, call service.gateway.services.jobs and shape the answer. Inputs
are checked by content before a job is queued: anything that is no image or video we read is
refused with 415; a truncated or malformed file, one over the pixel, frame or duration limits, or a
video without frames with 422 naming the input and the reason as `type`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from service.contract import PRIORITIES, Job, JobPage, JobRequest
from service.gateway.auth import AUTH_OPENAPI, ApiScope, authorize
from service.gateway.listing import CURSOR_PATTERN
from service.gateway.problems import AUTHENTICATED, responses
from service.gateway.routes.http import MAX_JSON_BODY, answering, form_fields, reading_form
from service.gateway.services import TooLarge, UnsupportedMedia
from service.gateway.services import jobs as job_service
from service.gateway.state import Gateway, get_gateway
from service.media import MOTION_TEMPLATE

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
GatewayDep = Annotated[Gateway, Depends(get_gateway)]

"""The largest JSON job request, and the largest text field of a multipart one (413 over it)."""

_REQUEST_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "source": {
                            "type": "string",
                            "format": "binary",
                            "description": "Image or video (none in a motion job).",
                        },
                        "driving": {
                            "type": "string",
                            "format": "binary",
                            "description": "Video, image or motion template (.npz); none for an expression "
                            "edit; a video in a motion job.",
                        },
                        "options": {"type": "string", "description": "AnimationOptions as JSON."},
                        "priority": {"type": "string", "enum": list(PRIORITIES)},
                        "output": {"type": "string", "description": "OutputSpec as JSON."},
                        "expression": {"type": "string", "description": "ExpressionControls as JSON."},
                        "keyframes": {"type": "string", "description": "A list of Keyframe as JSON."},
                        "webhook": {"type": "string", "description": "WebhookSpec as JSON."},
                    },
                }
            },
        },
    }
}


def extra_schemas() -> dict[str, Any]:
    """OpenAPI component schemas of the JSON job request, which the route reads by hand."""
    schema = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "JobRequest": schema}


async def _read_json_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_JSON_BODY:
            raise TooLarge(f"a JSON job request is at most {MAX_JSON_BODY} bytes")
    return bytes(body)


def _job_response(record_view: Job, status: int, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(record_view.model_dump(mode="json"), status_code=status, headers=headers)


@router.post(
    "",
    operation_id="create_job",
    status_code=202,
    response_model=Job,
    summary="Submit an animation job",
    openapi_extra=_REQUEST_BODY_DOC,
    responses={
        200: {"model": Job, "description": "The job an earlier request with this Idempotency-Key created."},
        **responses(*AUTHENTICATED, 409, 413, 415, 422),
    },
)
async def create_job(
    request: Request,
    gateway: GatewayDep,
    scope: ApiScope,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> Response:
    """Multipart (files `source`, `driving`; fields `options`, `priority`, `output`) or JSON (URLs or
    upload ids). Answers 202 with `Location: /v1/jobs/{id}`."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    with answering():
        if content_type == "multipart/form-data":
            fields = len(job_service.MULTIPART_FIELDS)
            async with reading_form(
                request, max_files=2, max_fields=fields, max_part_size=MAX_JSON_BODY
            ) as form:
                submission = await run_in_threadpool(job_service.parse_form, gateway, form_fields(form))
                record, created = await run_in_threadpool(
                    job_service.submit, gateway, submission, scope, idempotency_key
                )
        elif content_type == "application/json":
            body = await _read_json_body(request)
            submission = await run_in_threadpool(job_service.parse_json, gateway, body)
            record, created = await run_in_threadpool(
                job_service.submit, gateway, submission, scope, idempotency_key
            )
        else:
            raise UnsupportedMedia("send multipart/form-data or application/json")
    job = job_service.job_view(record, gateway.base_url(request))
    return _job_response(job, 202 if created else 200, {"Location": f"/v1/jobs/{record.id}"})


@router.get(
    "",
    operation_id="list_jobs",
    response_model=JobPage,
    summary="The caller's jobs, newest first",
    responses=responses(*AUTHENTICATED, 422),
)
async def list_jobs(
    request: Request,
    gateway: GatewayDep,
    scope: ApiScope,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page."),
    ] = None,
) -> Response:
    """One page of the jobs submitted with the caller's API key (never another key's)."""
    with answering():
        records, next_cursor = await job_service.page(gateway, scope, limit, cursor)
    base_url = gateway.base_url(request)
    page = JobPage(
        jobs=[job_service.job_view(record, base_url) for record in records], next_cursor=next_cursor
    )
    return Response(to_json(page), media_type="application/json")


@router.get(
    "/{job_id}",
    operation_id="get_job",
    response_model=Job,
    summary="Status, progress and result of a job",
    responses={304: {"description": "Not modified (If-None-Match)."}, **responses(*AUTHENTICATED, 404)},
    openapi_extra={
        **AUTH_OPENAPI,
        "parameters": [
            {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}
        ],
    },
)
async def get_job(job_id: str, request: Request) -> Response:
    """The job's state, with a strong ETag; If-None-Match with the current ETag answers 304.

    The hot path of polling clients: no dependency injection (authorization and headers are read
    here), and served by `read_routes` ahead of FastAPI's routing; this route documents it."""
    scope = await authorize(request)
    gateway: Gateway = request.app.state.gateway
    if_none_match = request.headers.get("if-none-match")
    with answering():
        record = await job_service.read(gateway, job_id, scope)
    body = to_json(job_service.job_view(record, gateway.base_url(request)))
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None:
        candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        if etag in candidates or "*" in candidates:
            return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


async def _serve_get_job(request: Request) -> Response:
    return await get_job(request.path_params["job_id"], request)


read_routes = [Route(f"{router.prefix}/{{job_id}}", _serve_get_job, methods=["GET"])]
"""GET /v1/jobs/{id} as a plain Starlette route, which the app puts before all others: FastAPI's
per-request machinery (parameter solving, its route wrappers) costs as much as the rest of a read."""


@router.get(
    "/{job_id}/events",
    operation_id="get_job_events",
    summary="The job's events, as server-sent events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: per event an `id:` and the job as JSON in `data:`; "
            "`: keep-alive` comments while nothing happens; it ends after the final event.",
            "content": {"text/event-stream": {}},
        },
        **responses(*AUTHENTICATED, 404, 422),
    },
)
async def get_job_events(
    job_id: str,
    request: Request,
    gateway: GatewayDep,
    scope: ApiScope,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", pattern=job_service.EVENT_ID_PATTERN)
    ] = None,
) -> StreamingResponse:
    """From the job's latest event on, or after `Last-Event-ID` (resuming a broken stream)."""
    with answering():
        record = await job_service.read(gateway, job_id, scope)
        after = job_service.event_id(last_event_id)
    base_url, payload = gateway.base_url(request), record.payload

    async def stream() -> AsyncIterator[bytes]:
        async for event in job_service.follow(gateway, record.id, after):
            if event is None:
                yield b": keep-alive\n\n"
                continue
            job = job_service.job_view(dataclasses.replace(event.record, payload=payload), base_url)
            yield b"id: %s\ndata: %s\n\n" % (event.id.encode(), to_json(job))

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.post(
    "/{job_id}/cancel",
    operation_id="cancel_job",
    response_model=Job,
    summary="Cancel a job",
    responses={
        202: {"model": Job, "description": "Running: the worker stops at its next frame batch."},
        **responses(*AUTHENTICATED, 404, 409),
    },
)
def cancel_job(job_id: str, request: Request, gateway: GatewayDep, scope: ApiScope) -> Response:
    """A queued job is canceled at once (200); a running one is flagged and stops soon (202)."""
    with answering():
        record = job_service.cancel(gateway, job_id, scope)
    job = job_service.job_view(record, gateway.base_url(request))
    return _job_response(job, 202 if record.status == "running" else 200)


@router.get(
    "/{job_id}/result",
    operation_id="get_job_result",
    summary="Download the result",
    response_class=Response,
    responses={
        200: {
            "description": "The result, streamed: the animation, or a motion job's template (.npz).",
            "content": {"video/mp4": {}, "image/png": {}, MOTION_TEMPLATE: {}},
        },
        302: {"description": "Redirect to a presigned storage URL."},
        **responses(*AUTHENTICATED, 404, 409, 410),
    },
)
def get_job_result(job_id: str, gateway: GatewayDep, scope: ApiScope) -> Response:
    """Redirect (302) to a presigned URL of the result, or stream it from the local store."""
    with answering():
        found = job_service.result(gateway, job_id, scope)
        if found.url is not None:
            return RedirectResponse(found.url, status_code=302)
        stream = job_service.open_result(gateway, found)

    def chunks() -> Iterator[bytes]:
        try:
            while chunk := stream.read(256 * 1024):
                yield chunk
        finally:
            stream.close()

    headers = {"Content-Disposition": f'attachment; filename="{found.filename}"'}
    if found.size_bytes is not None:
        headers["Content-Length"] = str(found.size_bytes)
    return StreamingResponse(chunks(), media_type=found.content_type, headers=headers)
