"""Jobs: parse a submission (multipart form or JSON), submit it, get, list and cancel jobs, find results.

Inputs are checked by content before a job is queued (service.media): anything that is no image
or video we read is refused as UnsupportedMedia; a truncated or malformed file, one over the pixel,
frame or duration limits, or a video without frames as InvalidRequest naming the input and the
reason as `type`. Functions here block (file and Redis I/O): async callers run them in a thread;
the reads of the fast path (`read`, `page`, `follow`) are async, on the asyncio Redis client.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import structlog
from pydantic import ValidationError

from common.expression import KEYFRAMES, ExpressionControls, Keyframe, keyframe_frames
from common.options import AnimationOptions
from service import tracing
from service.contract import (
    ID_PATTERN,
    PRIORITIES,
    TERMINAL_STATUSES,
    InputLocation,
    Job,
    JobError,
    JobPayload,
    JobRequest,
    JobResult,
    OutputSpec,
    Priority,
    Progress,
    WebhookSpec,
    WebhookStatus,
    check_job_shape,
)
from service.gateway.listing import BadCursor, Cursor
from service.gateway.services import (
    Conflict,
    FormFields,
    Gone,
    InvalidRequest,
    NotFound,
    invalid,
)
from service.gateway.services.inputs import (
    CheckedFile,
    check_fields,
    file_part,
    inspect_part,
    json_field,
    resolve_reference,
)
from service.gateway.state import Gateway
from service.media import (
    extension,
)
from service.queue import IdempotencyConflict, JobEvent, JobRecord
from service.storage import ObjectNotFound, ReadStream, Store
from service.urls import UnsafeURL, check_url

log = structlog.get_logger("gateway")

MULTIPART_FIELDS = frozenset(
    {"source", "driving", "options", "expression", "keyframes", "priority", "output", "webhook"}
)
"""The fields a multipart submission may have: files `source` and `driving`, the rest JSON or text."""
_ID = re.compile(ID_PATTERN)
EVENT_ID_PATTERN = r"^[0-9]{1,19}(-[0-9]{1,19})?$"
"""What `Last-Event-ID` takes: an event's id (a Redis stream id, milliseconds-sequence), or milliseconds
alone (the events after that time; "0": all of them)."""
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
EVENTS_BLOCK_S = 5.0
"""Longest wait for a job's next event in one Redis read (below the client's socket timeout)."""


@dataclass
class Submission:
    """A parsed, validated job request: inputs either uploaded parts or locations."""

    inputs: dict[str, CheckedFile | InputLocation]
    options: AnimationOptions
    priority: Priority
    output: OutputSpec
    fingerprint: str
    webhook: WebhookSpec | None = None
    expression: ExpressionControls | None = None
    keyframes: list[Keyframe] | None = None


class Submitted(NamedTuple):
    """The job a submission made, or the one an earlier request with its Idempotency-Key made."""

    record: JobRecord
    created: bool


@dataclass(frozen=True)
class Result:
    """Where a succeeded job's result is: a presigned `url`, or (None) only in the gateway's store."""

    key: str
    content_type: str
    filename: str
    size_bytes: int | None
    url: str | None


# --- parsing a submission -------------------------------------------------------------------------


def _fingerprint(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _edit_fields(fields: FormFields) -> tuple[ExpressionControls | None, list[Keyframe] | None]:
    """The optional JSON text fields `expression` (ExpressionControls) and `keyframes` of a form."""
    parsed: list[Any] = []
    for name, parse in (
        ("expression", ExpressionControls.model_validate_json),
        ("keyframes", KEYFRAMES.validate_json),
    ):
        value = fields.get(name)
        if value is None or value == "":
            parsed.append(None)
            continue
        if not isinstance(value, str):
            raise invalid([{"msg": f"'{name}' must be a JSON text field", "type": "type_error"}], name)
        try:
            parsed.append(parse(value))
        except ValidationError as exc:
            raise invalid(exc.errors(include_url=False), name) from exc
    return parsed[0], parsed[1]


def _check_shape(
    gateway: Gateway,
    output: OutputSpec,
    names: set[str],
    expression: ExpressionControls | None,
    keyframes: list[Keyframe] | None,
) -> None:
    """The job's shape (animation, still, keyframes, offsets or motion) for its inputs `names`, and the
    keyframes' frames within the limit."""
    try:
        check_job_shape(output.kind, "source" in names, "driving" in names, expression, keyframes)
    except ValueError as exc:
        raise invalid([{"msg": str(exc), "type": "value_error"}]) from exc
    limit = gateway.settings.max_driving_frames
    if keyframes is not None and keyframe_frames(keyframes) > limit:
        msg = f"the keyframes make {keyframe_frames(keyframes)} frames; at most {limit}"
        raise invalid([{"msg": msg, "type": "too_long"}], "keyframes")


def _check_motion_input(output: OutputSpec, content_type: str | None, *loc: str) -> None:
    """A motion job's driving input is a video (a template or an image has no motion to extract)."""
    if output.kind == "motion" and content_type is not None and not content_type.startswith("video/"):
        msg = "a motion job extracts the motion of a driving video; this driving input is no video"
        raise invalid([{"msg": msg, "type": "unsupported_input"}], *loc, code="unsupported_input")


def _check_webhook(gateway: Gateway, webhook: WebhookSpec | None) -> WebhookSpec | None:
    """A job's webhook, its URL checked like a URL input (http or https only); refused while the service
    has no webhook secret to sign deliveries with."""
    if webhook is None:
        return None
    if gateway.settings.webhook_secret is None:
        msg = "this service sends no webhooks: LIVEPORTRAIT_WEBHOOK_SECRET is not set"
        raise invalid([{"msg": msg, "type": "webhooks_disabled"}], "webhook")
    try:
        if webhook.url.lower().startswith("s3:"):
            raise UnsafeURL("a webhook URL is http or https")
        check_url(webhook.url, allow_private=gateway.settings.allow_private_urls, s3_buckets=[])
    except UnsafeURL as exc:
        raise invalid([{"msg": str(exc), "type": "url_refused"}], "webhook", "url") from exc
    return webhook


def parse_form(gateway: Gateway, fields: FormFields) -> Submission:
    """A submission from a multipart form: files `source` and `driving`, `options`, `priority`, `output`,
    `webhook`.

    The files are checked by content and hashed; they must stay open until the job is submitted.
    """
    check_fields(fields, MULTIPART_FIELDS)
    options = json_field(fields.get("options"), AnimationOptions, "options")
    output = json_field(fields.get("output"), OutputSpec, "output")
    webhook = _check_webhook(
        gateway, json_field(fields["webhook"], WebhookSpec, "webhook") if fields.get("webhook") else None
    )
    priority = fields.get("priority") or "default"
    if priority not in PRIORITIES:
        msg = f"priority must be one of {', '.join(PRIORITIES)}"
        raise invalid([{"msg": msg, "type": "literal_error"}], "priority")
    expression, keyframes = _edit_fields(fields)
    names = [name for name in ("source", "driving") if name in fields]
    _check_shape(gateway, output, set(names), expression, keyframes)
    parts = [inspect_part(gateway, file_part(fields, name), name) for name in names]
    if "driving" in names:
        _check_motion_input(output, parts[-1].content_type, "driving")
    document: dict[str, Any] = {
        "kind": "multipart",
        **{part.name: part.sha256 for part in parts},
        "options": options.model_dump(mode="json"),
        "output": output.model_dump(mode="json"),
        "priority": priority,
        "webhook": webhook.model_dump(mode="json") if webhook else None,
    }
    if expression is not None:
        document["expression"] = expression.model_dump(mode="json", exclude_defaults=True)
    if keyframes is not None:
        document["keyframes"] = KEYFRAMES.dump_python(keyframes, mode="json", exclude_defaults=True)
    return Submission(
        {part.name: part for part in parts},
        options,
        priority,
        output,
        _fingerprint(document),
        webhook,
        expression,
        keyframes,
    )


def parse_json(gateway: Gateway, body: bytes) -> Submission:
    """A submission from a JSON `JobRequest`: its URLs are checked, its uploads checked by content."""
    try:
        job_request = JobRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid(exc.errors(include_url=False)) from exc
    inputs: dict[str, CheckedFile | InputLocation] = {}
    names = {name for name in ("source", "driving") if getattr(job_request, name) is not None}
    _check_shape(gateway, job_request.output, names, job_request.expression, job_request.keyframes)
    for name in ("source", "driving"):
        ref = getattr(job_request, name)
        if ref is not None:
            inputs[name] = resolve_reference(gateway, name, ref.url, ref.upload_id)
    if job_request.driving is not None:
        _check_motion_input(job_request.output, inputs["driving"].content_type, "driving")
    webhook = _check_webhook(gateway, job_request.webhook)
    document = {"kind": "json", **job_request.model_dump(mode="json")}
    return Submission(
        inputs,
        job_request.options,
        job_request.priority,
        job_request.output,
        _fingerprint(document),
        webhook,
        job_request.expression,
        job_request.keyframes,
    )


# --- submitting -----------------------------------------------------------------------------------


def _store_input(store: Store, job_id: str, item: CheckedFile | InputLocation) -> InputLocation:
    if isinstance(item, InputLocation):
        return item
    key = f"inputs/{job_id}/{item.name}{extension(item.content_type)}"
    store.put(key, item.file, content_type=item.content_type)
    return InputLocation(key=key, content_type=item.content_type)


def submit(
    gateway: Gateway, submission: Submission, owner: str, idempotency_key: str | None = None
) -> Submitted:
    """Store the inputs, index and enqueue the job (or find the one this Idempotency-Key made).

    Raises InvalidRequest when the key was used with another request, Conflict while the job of
    its first use is still being created. A failed submission leaves nothing behind.
    """
    job_id = uuid.uuid4().hex
    queue = gateway.queue
    if idempotency_key is not None:
        try:
            existing = queue.reserve_idempotency(owner, idempotency_key, submission.fingerprint, job_id)
        except IdempotencyConflict as exc:
            raise InvalidRequest("this Idempotency-Key was already used with a different request") from exc
        if existing is not None:
            record = queue.get(existing)
            if record is None:
                raise Conflict("a request with this Idempotency-Key is still being processed; retry shortly")
            return Submitted(record, False)
    created_at = time.time()
    gateway.index.add(owner, job_id, created_at)
    try:
        stored = {name: _store_input(gateway.store, job_id, item) for name, item in submission.inputs.items()}
        payload = JobPayload(
            job_id=job_id,
            source=stored.get("source"),
            driving=stored.get("driving"),
            options=submission.options,
            expression=submission.expression,
            keyframes=submission.keyframes,
            output=submission.output,
            traceparent=tracing.current_traceparent(),
        )
        webhook = submission.webhook.model_dump(mode="json") if submission.webhook else None
        record = queue.submit(
            payload, submission.priority, owner=owner, created_at=created_at, webhook=webhook
        )
    except BaseException:
        if idempotency_key is not None:
            queue.release_idempotency(owner, idempotency_key, job_id)
        gateway.index.remove(owner, job_id)
        gateway.store.delete_prefix(f"inputs/{job_id}/")
        raise
    log.info("job.submitted", job_id=record.id, priority=submission.priority)
    return Submitted(record, True)


# --- reading and canceling ------------------------------------------------------------------------


def _owned(record: JobRecord | None, owner: str) -> JobRecord:
    """The record if it is the owner's; NotFound for none or another owner's."""
    if record is None or record.owner != owner:
        raise NotFound("no such job")
    return record


def get(gateway: Gateway, job_id: str, owner: str) -> JobRecord:
    """The owner's job; NotFound also for other owners' jobs and malformed ids."""
    return _owned(gateway.queue.get(job_id) if _ID.fullmatch(job_id) else None, owner)


async def read(gateway: Gateway, job_id: str, owner: str) -> JobRecord:
    """`get` on the asyncio client: one HGETALL."""
    return _owned(await gateway.reader.get(job_id) if _ID.fullmatch(job_id) else None, owner)


def event_id(value: str | None) -> str | None:
    """A `Last-Event-ID` checked to be an event id (InvalidRequest if not)."""
    if value is not None and not _EVENT_ID.fullmatch(value):
        detail = [{"loc": ["header", "Last-Event-ID"], "msg": "not an event id", "type": "value_error"}]
        raise InvalidRequest(detail)
    return value


async def follow(gateway: Gateway, job_id: str, after: str | None) -> AsyncIterator[JobEvent | None]:
    """The events of a job: those after the event id `after`, or from its latest one on; None each
    keep-alive period without one. Ends after a final event, or at once when the job ended before."""
    reader, keepalive = gateway.reader, gateway.settings.events_keepalive_s
    if after is None:
        latest = await reader.latest_event(job_id)
        if latest is None:
            return
        yield latest
        if latest.record.status in TERMINAL_STATUSES:
            return
        after = latest.id
    block_ms = int(min(keepalive, EVENTS_BLOCK_S) * 1000)
    quiet_since = time.monotonic()
    while True:
        events = await reader.events_after(job_id, after, block_ms=block_ms)
        for event in events:
            yield event
            if event.record.status in TERMINAL_STATUSES:
                return
        if events:
            after, quiet_since = events[-1].id, time.monotonic()
            continue
        current = await reader.get(job_id)
        if current is None or current.status in TERMINAL_STATUSES:
            return  # expired, or its final event is before `after`
        if time.monotonic() - quiet_since >= keepalive:
            quiet_since = time.monotonic()
            yield None


async def page(
    gateway: Gateway, owner: str, limit: int, cursor: str | None
) -> tuple[list[JobRecord], str | None]:
    """Up to `limit` of the owner's jobs after `cursor`, newest first, and the cursor of the next page."""
    position = None
    if cursor is not None:
        try:
            position = Cursor.decode(cursor)
        except BadCursor as exc:
            raise InvalidRequest(
                [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}]
            ) from exc
    records, following = await gateway.index.page(owner, limit, position)
    return records, following.encode() if following else None


def cancel(gateway: Gateway, job_id: str, owner: str) -> JobRecord:
    """Cancel the owner's job: a queued one at once (its inputs are deleted), a running one is flagged
    for its worker to stop at the next frame batch. Returns the job afterwards; Conflict once it ended."""
    get(gateway, job_id, owner)
    outcome = gateway.queue.cancel(job_id)
    log.info("job.cancel", job_id=job_id, outcome=outcome)
    if outcome in ("succeeded", "failed"):
        raise Conflict(f"job already {outcome}")
    if outcome == "canceled":
        gateway.store.delete_prefix(f"inputs/{job_id}/")
    return get(gateway, job_id, owner)


def result(gateway: Gateway, job_id: str, owner: str) -> Result:
    """Where the result of the owner's job is (a presigned URL when the store hands them out).

    Conflict unless the job succeeded."""
    record = get(gateway, job_id, owner)
    if record.status != "succeeded" or not record.result_key:
        raise Conflict(f"job is {record.status}; a result exists once it succeeded")
    content_type = record.result_content_type or "application/octet-stream"
    filename = record.payload.get("output", {}).get("filename") or f"{job_id}{extension(content_type)}"
    url = gateway.store.presigned_get(
        record.result_key,
        expires_s=gateway.settings.presign_expiry_s,
        filename=filename,
        content_type=content_type,
    )
    return Result(record.result_key, content_type, filename, record.result_bytes, url)


def open_result(gateway: Gateway, found: Result) -> ReadStream:
    """A stream of the result from the store; Gone once it is no longer stored."""
    try:
        return gateway.store.open(found.key)
    except ObjectNotFound as exc:
        raise Gone("the result is no longer stored") from exc


# --- the public representation --------------------------------------------------------------------


def _timestamp(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None


def _progress(record: JobRecord) -> Progress:
    """The job's progress: the worker's phase and estimate when it reports them, else from the frames."""
    fraction = record.fraction
    eta = record.eta_s
    if fraction is None:
        fraction = min(1.0, record.frames_done / record.frames_total) if record.frames_total else 0.0
        if record.status == "running" and record.frames_done and record.started_at and record.progress_at:
            pace = (record.progress_at - record.started_at) / record.frames_done
            eta = round(max(0.0, pace * ((record.frames_total or 0) - record.frames_done)), 1)
    running = record.status == "running"
    return Progress(
        phase=record.phase if running else None,
        phase_done=record.phase_done if running else 0,
        phase_total=record.phase_total if running else None,
        frames_done=record.frames_done,
        frames_total=record.frames_total,
        fraction=1.0 if record.status == "succeeded" else fraction,
        eta_s=eta if running and not record.stalled else None,
    )


def _webhook(record: JobRecord) -> WebhookStatus | None:
    if record.webhook is None:
        return None
    return WebhookStatus(
        url=record.webhook["url"],
        events=record.webhook["events"],
        delivered=record.webhook_delivered,
        pending=record.webhook_pending,
        failed=record.webhook_failed,
        disabled=record.webhook_disabled,
        last_attempt_at=_timestamp(record.webhook_last_at),
        last_status=record.webhook_last_status,
        last_error=record.webhook_last_error or None,
    )


def job_view(record: JobRecord, base_url: str) -> Job:
    """The public representation of a job record (stable between progress updates, for ETags)."""
    error = last_error = None
    if record.status == "failed":
        error = JobError(code=record.error_code or "internal_error", message=record.error_message or "")
    if record.last_error_code:
        last_error = JobError(code=record.last_error_code, message=record.last_error_message or "")
    job_result = None
    if record.status == "succeeded" and record.result_key:
        job_result = JobResult(
            url=f"{base_url}/v1/jobs/{record.id}/result",
            content_type=record.result_content_type or "application/octet-stream",
            frames=record.result_frames or 0,
            fps=record.result_fps or 0.0,
            size_bytes=record.result_bytes,
            content_credentials=record.result_credentials,
        )
    return Job(
        id=record.id,
        status=record.status,
        priority=record.priority,
        created_at=_timestamp(record.created_at),
        started_at=_timestamp(record.started_at),
        finished_at=_timestamp(record.finished_at),
        progress=_progress(record),
        error=error,
        result=job_result,
        cancel_requested=record.cancel_requested,
        attempts=record.attempts,
        stalled=record.stalled and record.status == "running",
        last_error=last_error,
        webhook=_webhook(record),
        trace_id=tracing.trace_id_of(record.payload.get("traceparent")),
    )
