"""W3C Trace Context for the gateway and the worker: parse, start, propagate and log a trace.

The gateway reads the `traceparent` header of each request (and starts a new trace when it is
absent or malformed), binds the trace id to every log line of the request, answers with a
`traceresponse` header naming its own span, and stores a child `traceparent` in each job it
creates. The worker binds the job's trace id and a span id of its own to every log line of the
job, and the job status reports the trace id. No spans are exported: the trace id is the key that
ties the client's request to the gateway's and the worker's log lines.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_HEADER = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_WANTED = frozenset({b"traceparent", b"x-request-id"})


@dataclass(frozen=True)
class TraceContext:
    """One position in a trace: the trace id, the current span id and the trace flags."""

    trace_id: str
    span_id: str
    flags: str = "00"

    @classmethod
    def start(cls) -> TraceContext:
        """A new trace (not sampled: the service records no spans)."""
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    def child(self) -> TraceContext:
        """A new span of the same trace, with the same flags."""
        return TraceContext(self.trace_id, secrets.token_hex(8), self.flags)

    @property
    def traceparent(self) -> str:
        """This context as a version-00 `traceparent` value."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The context of a `traceparent` header value, or None when it is absent or invalid.

    Follows the W3C rules: lower-case hex only, version ff and all-zero ids are invalid, version 00
    is exactly 55 characters, and a later version may append fields after a dash.
    """
    if not value:
        return None
    value = value.strip(" \t")
    match = _HEADER.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if len(value) != 55 and (version == "00" or value[55] != "-"):
        return None
    return TraceContext(trace_id, span_id, flags)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a stored `traceparent`, if there is a valid one."""
    context = parse_traceparent(traceparent)
    return context.trace_id if context else None


def job_log_fields(traceparent: str | None) -> dict[str, str]:
    """Log fields of one worker attempt at a job: its trace id, a new span id and the parent span."""
    parent = parse_traceparent(traceparent)
    if parent is None:
        return {}
    span = parent.child()
    return {"trace_id": span.trace_id, "span_id": span.span_id, "parent_span_id": parent.span_id}


_current: ContextVar[TraceContext | None] = ContextVar("liveportrait_trace", default=None)


def current_traceparent() -> str | None:
    """The gateway span of the request being served, as a `traceparent` for the job it creates."""
    context = _current.get()
    return context.traceparent if context else None


class TraceContextMiddleware:
    """ASGI middleware: one gateway span per request, bound to logs and sent back in `traceresponse`.

    An `X-Request-ID` header (as a load balancer sets it) is bound to the log lines as well.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request inside its trace context."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name: value for name, value in scope.get("headers", []) if name in _WANTED}
        incoming = parse_traceparent(headers.get(b"traceparent", b"").decode("latin-1"))
        context = incoming.child() if incoming else TraceContext.start()
        fields = {"trace_id": context.trace_id, "span_id": context.span_id}
        if incoming is not None:
            fields["parent_span_id"] = incoming.span_id
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")
        if _REQUEST_ID.match(request_id):
            fields["request_id"] = request_id

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("traceresponse", context.traceparent)
            await send(message)

        token = _current.set(context)
        try:
            with structlog.contextvars.bound_contextvars(**fields):
                await self.app(scope, receive, send_with_trace)
        finally:
            _current.reset(token)
