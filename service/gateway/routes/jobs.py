"""/v1/jobs: submit (multipart files or JSON references), list, inspect, cancel, fetch the result.

Inputs are checked by content before a job is queued (service.media): anything that is no image
or video we read is refused with 415; a truncated or malformed file, one over the pixel, frame or
duration limits, or a video without frames with 422 naming the input and the reason as `type`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from common.options import AnimationOptions
from service import tracing
from service.contract import (
    ID_PATTERN,
    PRIORITIES,
    InputLocation,
    Job,
    JobError,
    JobPage,
    JobPayload,
    JobRequest,
    JobResult,
    OutputSpec,
    Priority,
    Progress,
)
from service.gateway.auth import ApiScope
from service.gateway.listing import BadCursor, Cursor
from service.gateway.state import Gateway, get_gateway
from service.media import HEAD_BYTES, MediaLimits, MediaRejected, extension, inspect_media
from service.queue import IdempotencyConflict, JobRecord
from service.storage import ObjectNotFound, Store
from service.urls import S3Location, UnsafeURL, check_url

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = structlog.get_logger("gateway")
M = TypeVar("M", bound=BaseModel)
GatewayDep = Annotated[Gateway, Depends(get_gateway)]

MAX_JSON_BODY = 64 * 1024
_MULTIPART_FIELDS = {"source", "driving", "options", "priority", "output"}
_HASH_CHUNK = 1024 * 1024

_REQUEST_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["source", "driving"],
                    "properties": {
                        "source": {"type": "string", "format": "binary", "description": "Image or video."},
                        "driving": {"type": "string", "format": "binary", "description": "Video or image."},
                        "options": {"type": "string", "description": "AnimationOptions as JSON."},
                        "priority": {"type": "string", "enum": list(PRIORITIES)},
                        "output": {"type": "string", "description": "OutputSpec as JSON."},
                    },
                }
            },
        },
    }
}


@dataclass
class _Part:
    """A multipart file, inspected: spooled on disk, sniffed, hashed."""

    name: str
    file: IO[bytes]
    content_type: str
    sha256: str


@dataclass
class _Submission:
    """A parsed, validated job request: inputs either uploaded parts or locations."""

    inputs: dict[str, _Part | InputLocation]
    options: AnimationOptions
    priority: Priority
    output: OutputSpec
    fingerprint: str


def _invalid(errors: list[dict[str, Any]], *prefix: str | int) -> HTTPException:
    detail = [
        {"loc": ["body", *prefix, *e.get("loc", ())], "msg": e["msg"], "type": e.get("type", "value_error")}
        for e in errors
    ]
    return HTTPException(status_code=422, detail=detail)


def _fingerprint(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _json_field(value: object, model: type[M], name: str) -> M:
    if value is None or value == "":
        return model()
    if not isinstance(value, str):
        raise _invalid([{"msg": f"'{name}' must be a JSON text field", "type": "type_error"}], name)
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        raise _invalid(exc.errors(include_url=False), name) from exc


def extra_schemas() -> dict[str, Any]:
    """OpenAPI component schemas of the JSON job request, which the route reads by hand."""
    schema = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "JobRequest": schema}


def _refused(exc: MediaRejected, *loc: str) -> HTTPException:
    """The answer to an input refused by its content: 415 if it is no media we read, else 422."""
    if exc.code == "unsupported_media" and len(loc) == 1:
        return HTTPException(status_code=415, detail=f"'{loc[0]}' is {exc.message}")
    return _invalid([{"msg": f"'{loc[0]}': {exc.message}", "type": exc.code}], *loc)


def _inspect_part(upload: UploadFile, name: str, gateway: Gateway) -> _Part:
    """Check size and content of a spooled multipart file, and hash it."""
    max_bytes = gateway.settings.max_input_bytes
    size = upload.size if upload.size is not None else 0
    if size > max_bytes:
        raise HTTPException(status_code=413, detail=f"'{name}' is larger than {max_bytes} bytes")
    if size == 0:
        raise _invalid([{"msg": f"'{name}' is empty", "type": "value_error"}], name)
    file = upload.file
    try:
        info = inspect_media(file, size, MediaLimits.from_settings(gateway.settings))
    except MediaRejected as exc:
        raise _refused(exc, name) from exc
    content_type = info.content_type
    file.seek(0)
    digest = hashlib.sha256()
    while chunk := file.read(_HASH_CHUNK):
        digest.update(chunk)
    file.seek(0)
    return _Part(name=name, file=file, content_type=content_type, sha256=digest.hexdigest())


async def _read_json_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_JSON_BODY:
            raise HTTPException(
                status_code=413, detail=f"a JSON job request is at most {MAX_JSON_BODY} bytes"
            )
    return bytes(body)


def _resolve_reference(gateway: Gateway, name: str, url: str | None, upload_id: str | None) -> InputLocation:
    """Check a URL or an upload id of a JSON request and turn it into an input location."""
    settings = gateway.settings
    if url is not None:
        try:
            checked = check_url(
                url, allow_private=settings.allow_private_urls, s3_buckets=settings.s3_input_buckets
            )
        except UnsafeURL as exc:
            raise _invalid([{"msg": str(exc), "type": "url_refused"}], name, "url") from exc
        if isinstance(checked, S3Location):
            return InputLocation(url=f"s3://{checked.bucket}/{checked.key}")
        return InputLocation(url=checked)
    key = f"uploads/{upload_id}"
    try:
        size = gateway.store.size(key)
        head = gateway.store.read_head(key, HEAD_BYTES)
    except ObjectNotFound as exc:
        msg = f"upload {upload_id} not found (not uploaded yet, or expired)"
        raise _invalid([{"msg": msg, "type": "upload_missing"}], name, "upload_id") from exc
    if size > settings.max_input_bytes:
        raise HTTPException(
            status_code=413, detail=f"upload {upload_id} is larger than {settings.max_input_bytes}"
        )
    limits = MediaLimits.from_settings(settings)
    try:
        info = inspect_media(io.BytesIO(head), size, limits, available=len(head))
    except MediaRejected as exc:
        raise _refused(exc, name, "upload_id") from exc
    return InputLocation(key=key, content_type=info.content_type)


async def _parse_multipart(gateway: Gateway, form: Any) -> _Submission:
    unknown = sorted(set(form.keys()) - _MULTIPART_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(_MULTIPART_FIELDS))
        raise _invalid(
            [{"msg": f"unknown form fields {unknown}; allowed: {allowed}", "type": "extra_forbidden"}]
        )
    options = _json_field(form.get("options"), AnimationOptions, "options")
    output = _json_field(form.get("output"), OutputSpec, "output")
    priority = form.get("priority") or "default"
    if priority not in PRIORITIES:
        msg = f"priority must be one of {', '.join(PRIORITIES)}"
        raise _invalid([{"msg": msg, "type": "literal_error"}], "priority")
    source = await run_in_threadpool(_inspect_part, _file_part(form, "source"), "source", gateway)
    driving = await run_in_threadpool(_inspect_part, _file_part(form, "driving"), "driving", gateway)
    document = {
        "kind": "multipart",
        "source": source.sha256,
        "driving": driving.sha256,
        "options": options.model_dump(mode="json"),
        "output": output.model_dump(mode="json"),
        "priority": priority,
    }
    return _Submission(
        {"source": source, "driving": driving}, options, priority, output, _fingerprint(document)
    )


def _file_part(form: Any, name: str) -> UploadFile:
    upload = form.get(name)
    if not isinstance(upload, UploadFile):
        raise _invalid([{"msg": f"'{name}' must be a file part", "type": "missing"}], name)
    return upload


async def _parse_json(request: Request, gateway: Gateway) -> _Submission:
    body = await _read_json_body(request)
    try:
        job_request = JobRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc.errors(include_url=False)) from exc
    inputs: dict[str, _Part | InputLocation] = {}
    for name in ("source", "driving"):
        ref = getattr(job_request, name)
        inputs[name] = await run_in_threadpool(_resolve_reference, gateway, name, ref.url, ref.upload_id)
    document = {"kind": "json", **job_request.model_dump(mode="json")}
    return _Submission(
        inputs, job_request.options, job_request.priority, job_request.output, _fingerprint(document)
    )


def _store_input(store: Store, job_id: str, item: _Part | InputLocation) -> InputLocation:
    if isinstance(item, InputLocation):
        return item
    key = f"inputs/{job_id}/{item.name}{extension(item.content_type)}"
    store.put(key, item.file, content_type=item.content_type)
    return InputLocation(key=key, content_type=item.content_type)


def _create(
    gateway: Gateway, submission: _Submission, scope: str, idempotency_key: str | None
) -> tuple[JobRecord, bool]:
    """Create the job (or find the one this Idempotency-Key made); True when it is new."""
    job_id = uuid.uuid4().hex
    queue = gateway.queue
    if idempotency_key is not None:
        try:
            existing = queue.reserve_idempotency(scope, idempotency_key, submission.fingerprint, job_id)
        except IdempotencyConflict as exc:
            msg = "this Idempotency-Key was already used with a different request"
            raise HTTPException(status_code=422, detail=msg) from exc
        if existing is not None:
            record = queue.get(existing)
            if record is None:
                msg = "a request with this Idempotency-Key is still being processed; retry shortly"
                raise HTTPException(status_code=409, detail=msg)
            return record, False
    gateway.index.add(scope, job_id, time.time())
    try:
        payload = JobPayload(
            job_id=job_id,
            source=_store_input(gateway.store, job_id, submission.inputs["source"]),
            driving=_store_input(gateway.store, job_id, submission.inputs["driving"]),
            options=submission.options,
            output=submission.output,
            traceparent=tracing.current_traceparent(),
        )
        record = queue.submit(payload, submission.priority, owner=scope)
    except BaseException:
        if idempotency_key is not None:
            queue.release_idempotency(scope, idempotency_key, job_id)
        gateway.index.remove(scope, job_id)
        gateway.store.delete_prefix(f"inputs/{job_id}/")
        raise
    log.info("job.submitted", job_id=record.id, priority=submission.priority)
    return record, True


def _timestamp(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None


def job_view(record: JobRecord, base_url: str) -> Job:
    """The public representation of a job record (stable between progress updates, for ETags)."""
    fraction = 0.0
    eta = None
    if record.frames_total:
        fraction = min(1.0, record.frames_done / record.frames_total)
        if record.status == "running" and record.frames_done and record.started_at and record.progress_at:
            pace = (record.progress_at - record.started_at) / record.frames_done
            eta = round(max(0.0, pace * (record.frames_total - record.frames_done)), 1)
    if record.status == "succeeded":
        fraction = 1.0
    error = None
    if record.status == "failed":
        error = JobError(code=record.error_code or "internal_error", message=record.error_message or "")
    result = None
    if record.status == "succeeded" and record.result_key:
        result = JobResult(
            url=f"{base_url}/v1/jobs/{record.id}/result",
            content_type=record.result_content_type or "application/octet-stream",
            frames=record.result_frames or 0,
            fps=record.result_fps or 0.0,
            size_bytes=record.result_bytes,
        )
    return Job(
        id=record.id,
        status=record.status,  # type: ignore[arg-type]
        priority=record.priority,
        created_at=_timestamp(record.created_at),  # type: ignore[arg-type]
        started_at=_timestamp(record.started_at),
        finished_at=_timestamp(record.finished_at),
        progress=Progress(
            frames_done=record.frames_done, frames_total=record.frames_total, fraction=fraction, eta_s=eta
        ),
        error=error,
        result=result,
        cancel_requested=record.cancel_requested,
        attempts=record.attempts,
        trace_id=tracing.trace_id_of(record.payload.get("traceparent")),
    )


def _load(gateway: Gateway, job_id: str, scope: str) -> JobRecord:
    """The caller's job, or 404 (also for other callers' jobs and malformed ids)."""
    record = None
    if re.fullmatch(ID_PATTERN, job_id):
        record = gateway.queue.get(job_id)
    if record is None or record.owner != scope:
        raise HTTPException(status_code=404, detail="no such job")
    return record


@router.post(
    "",
    operation_id="create_job",
    status_code=202,
    response_model=Job,
    summary="Submit an animation job",
    openapi_extra=_REQUEST_BODY_DOC,
    responses={
        200: {"model": Job, "description": "The job an earlier request with this Idempotency-Key created."},
        413: {"description": "Body or input too large."},
        415: {"description": "An input is not an image or video."},
        422: {"description": "Invalid request or options, refused URL, or reused Idempotency-Key."},
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
    if content_type == "multipart/form-data":
        async with request.form(max_files=2, max_fields=3, max_part_size=64 * 1024) as form:
            submission = await _parse_multipart(gateway, form)
            record, created = await run_in_threadpool(_create, gateway, submission, scope, idempotency_key)
    elif content_type == "application/json":
        submission = await _parse_json(request, gateway)
        record, created = await run_in_threadpool(_create, gateway, submission, scope, idempotency_key)
    else:
        raise HTTPException(status_code=415, detail="send multipart/form-data or application/json")
    job = job_view(record, gateway.base_url(request))
    return JSONResponse(
        job.model_dump(mode="json"),
        status_code=202 if created else 200,
        headers={"Location": f"/v1/jobs/{record.id}"},
    )


@router.get(
    "",
    operation_id="list_jobs",
    response_model=JobPage,
    summary="The caller's jobs, newest first",
    responses={422: {"description": "Malformed cursor or limit."}},
)
def list_jobs(
    request: Request,
    gateway: GatewayDep,
    scope: ApiScope,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=128, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobPage:
    """One page of the jobs submitted with the caller's API key (never another key's)."""
    position = None
    if cursor is not None:
        try:
            position = Cursor.decode(cursor)
        except BadCursor as exc:
            detail = [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}]
            raise HTTPException(status_code=422, detail=detail) from exc
    records, following = gateway.index.page(scope, limit, position)
    base_url = gateway.base_url(request)
    return JobPage(
        jobs=[job_view(record, base_url) for record in records],
        next_cursor=following.encode() if following else None,
    )


@router.get(
    "/{job_id}",
    operation_id="get_job",
    response_model=Job,
    summary="Status, progress and result of a job",
    responses={304: {"description": "Not modified (If-None-Match)."}, 404: {"description": "No such job."}},
)
def get_job(
    job_id: str,
    request: Request,
    gateway: GatewayDep,
    scope: ApiScope,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The job's state, with a strong ETag; If-None-Match with the current ETag answers 304."""
    job = job_view(_load(gateway, job_id, scope), gateway.base_url(request))
    body = job.model_dump_json().encode()
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None:
        candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        if etag in candidates or "*" in candidates:
            return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.post(
    "/{job_id}/cancel",
    operation_id="cancel_job",
    response_model=Job,
    summary="Cancel a job",
    responses={
        202: {"model": Job, "description": "Running: the worker stops at its next frame batch."},
        404: {"description": "No such job."},
        409: {"description": "The job already succeeded or failed."},
    },
)
def cancel_job(job_id: str, request: Request, gateway: GatewayDep, scope: ApiScope) -> Response:
    """A queued job is canceled at once (200); a running one is flagged and stops soon (202)."""
    _load(gateway, job_id, scope)
    outcome = gateway.queue.cancel(job_id)
    log.info("job.cancel", job_id=job_id, outcome=outcome)
    if outcome in ("succeeded", "failed"):
        raise HTTPException(status_code=409, detail=f"job already {outcome}")
    if outcome == "canceled":
        gateway.store.delete_prefix(f"inputs/{job_id}/")
    record = _load(gateway, job_id, scope)
    job = job_view(record, gateway.base_url(request))
    status = 202 if record.status == "running" else 200
    return JSONResponse(job.model_dump(mode="json"), status_code=status)


@router.get(
    "/{job_id}/result",
    operation_id="get_job_result",
    summary="Download the result",
    response_class=Response,
    responses={
        200: {"description": "The result, streamed.", "content": {"video/mp4": {}, "image/png": {}}},
        302: {"description": "Redirect to a presigned storage URL."},
        404: {"description": "No such job."},
        409: {"description": "The job has not succeeded."},
        410: {"description": "The result expired."},
    },
)
def get_job_result(job_id: str, gateway: GatewayDep, scope: ApiScope) -> Response:
    """Redirect (302) to a presigned URL of the result, or stream it from the local store."""
    record = _load(gateway, job_id, scope)
    if record.status != "succeeded" or not record.result_key:
        raise HTTPException(
            status_code=409, detail=f"job is {record.status}; a result exists once it succeeded"
        )
    content_type = record.result_content_type or "application/octet-stream"
    filename = record.payload.get("output", {}).get("filename") or f"{job_id}{extension(content_type)}"
    url = gateway.store.presigned_get(
        record.result_key,
        expires_s=gateway.settings.presign_expiry_s,
        filename=filename,
        content_type=content_type,
    )
    if url is not None:
        return RedirectResponse(url, status_code=302)
    try:
        stream = gateway.store.open(record.result_key)
    except ObjectNotFound as exc:
        raise HTTPException(status_code=410, detail="the result is no longer stored") from exc

    def chunks() -> Iterator[bytes]:
        try:
            while chunk := stream.read(256 * 1024):
                yield chunk
        finally:
            stream.close()

    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if record.result_bytes is not None:
        headers["Content-Length"] = str(record.result_bytes)
    return StreamingResponse(chunks(), media_type=content_type, headers=headers)
