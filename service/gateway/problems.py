"""The one error body of the gateway: RFC 9457 problem details (`application/problem+json`).

Every 4xx and 5xx answer, whichever route or layer refuses (a service's refusal, FastAPI's request
validation, authentication and rate limits, the body size limit, Redis or storage down, a crash),
is a `Problem`: `status`, `title` (the status's phrase), `detail` for people, our machine-readable
`code` (`common.errors.ProblemCode`) and, for 422, the field `errors` (`loc`, `msg`, `type`).
`install(app)` registers the handlers; routes declare what they can answer with `responses(...)`,
so the OpenAPI spec lists every status with this schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import redis
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from common.errors import ProblemCode
from service.gateway.services import (
    Conflict,
    Forbidden,
    Gone,
    InvalidRequest,
    NotFound,
    ServiceError,
    TooLarge,
    UnsupportedMedia,
)
from service.storage import StorageError

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("gateway")


class FieldError(BaseModel):
    """One invalid part of a request: where (`loc`, from "body", "query", "header" or "path"), why."""

    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An error answer (RFC 9457 problem details) with our machine-readable `code`."""

    type: str = Field("about:blank", description="Always about:blank: `title` is the status's phrase.")
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong, for people.")
    code: ProblemCode = Field(description="Stable, machine-readable cause (docs/api.md, Errors).")
    instance: str | None = Field(None, description="The request path.")
    errors: list[FieldError] | None = Field(None, description="422: each invalid field.")


STATUS_OF: dict[type[ServiceError], int] = {
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    TooLarge: 413,
    UnsupportedMedia: 415,
    InvalidRequest: 422,
}
"""The status code that answers each refusal of a service."""

CODE_OF: dict[int, ProblemCode] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "too_large",
    415: "unsupported_media",
    422: "invalid_request",
    429: "rate_limited",
    503: "service_unavailable",
}
"""The `code` of a status when nothing more precise is known."""

_DESCRIPTIONS: dict[int, str] = {
    400: "The body is not JSON text (not UTF-8).",
    401: "Missing or invalid API key.",
    403: "Missing, invalid or expired grant.",
    404: "No such resource (for this API key).",
    409: "The resource's state forbids this now.",
    410: "The resource is no longer stored.",
    413: "The body, a form field or an input is over its size limit.",
    415: "An input is not a format we read, or the body is of another content type.",
    422: "Invalid fields (listed in `errors`), or an input refused by its content.",
    429: "Over the rate limit: retry after `Retry-After` seconds.",
    503: "The job queue or storage is unavailable: retry later.",
}
AUTHENTICATED: tuple[int, ...] = (401, 429, 503)
"""What every route behind an API key can answer (missing key, rate limit, Redis down)."""


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these error statuses, each a `Problem` as application/problem+json."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {"description": _DESCRIPTIONS[status], "content": {PROBLEM_JSON: {"schema": schema}}}
        for status in sorted(set(statuses))
    }


def problem_response(
    request_path: str | None,
    status: int,
    detail: str,
    *,
    code: ProblemCode | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Response:
    """The problem-details answer of `status` (`extensions`: members of its own, RFC 9457 section 3.2)."""
    body: dict[str, Any] = {
        **(extensions or {}),
        "type": "about:blank",
        "title": _phrase(status),
        "status": status,
        "detail": detail,
        "code": code or CODE_OF.get(status, "internal_error"),
        "instance": request_path,
    }
    if errors is not None:
        body["errors"] = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


class ProblemError(HTTPException):
    """An HTTP error with a `code` (and field `errors`) of its own; raise it anywhere in a route."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: ProblemCode | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=dict(headers) if headers else None)
        self.code = code
        self.errors = errors


def from_service(exc: ServiceError) -> ProblemError:
    """The HTTP error answering a service's refusal."""
    status = next((STATUS_OF[kind] for kind in type(exc).__mro__ if kind in STATUS_OF), 400)
    if isinstance(exc.detail, str):
        return ProblemError(status, exc.detail, code=exc.code)
    return ProblemError(status, _summary(exc.detail), code=exc.code, errors=exc.detail)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _summary(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line naming the invalid fields of a 422."""
    parts = []
    for error in errors[:3]:
        where = ".".join(str(part) for part in error["loc"][1:]) or str(error["loc"][0])
        parts.append(f"{where}: {error['msg']}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def _allowed_methods(request: Request) -> list[str]:
    """The methods the spec lists for the request's path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's errors as FieldErrors (only loc, msg and type: `ctx` may hold exceptions)."""
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def install(app: FastAPI) -> None:
    """Answer every error of `app` as a Problem, and add the schema to its OpenAPI components."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = getattr(exc, "code", None)
        errors = getattr(exc, "errors", None)
        detail = exc.detail if isinstance(exc.detail, str) else _summary(exc.detail)
        if not isinstance(exc.detail, str) and errors is None:
            errors = exc.detail
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem_response(
            request.url.path, exc.status_code, detail, code=code, errors=errors, headers=headers
        )

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        return problem_response(request.url.path, 422, _summary(errors), errors=errors)

    async def service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return await http_error(request, from_service(exc))

    async def queue_down(request: Request, exc: Exception) -> Response:
        log.warning("request.queue_unavailable", error=str(exc))
        return problem_response(request.url.path, 503, "the job queue is unavailable; retry later")

    async def storage_down(request: Request, exc: Exception) -> Response:
        log.warning("request.storage_unavailable", error=str(exc))
        return problem_response(request.url.path, 503, "storage is unavailable; retry later")

    async def crashed(request: Request, exc: Exception) -> Response:
        return problem_response(
            request.url.path, 500, "an unexpected error; the request was not completed", code="internal_error"
        )

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, queue_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, queue_down)
    app.add_exception_handler(StorageError, storage_down)
    app.add_exception_handler(Exception, crashed)


def component_schemas() -> dict[str, Any]:
    """The OpenAPI component schemas of Problem and FieldError."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "Problem": schema}


__all__ = [
    "AUTHENTICATED",
    "CODE_OF",
    "PROBLEM_JSON",
    "FieldError",
    "Problem",
    "ProblemError",
    "component_schemas",
    "from_service",
    "install",
    "problem_response",
    "responses",
]
