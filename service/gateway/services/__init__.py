"""The gateway's logic, one module per resource (`jobs`, `uploads`, `live`), and `inputs`: the checks of
what a request sends. The routes only speak HTTP.

A service function takes the app's `Gateway` and plain values (the parts of a parsed form, a body,
an owner) and returns records, or refuses with one of the `ServiceError`s below. Routes turn those
refusals into HTTP answers (service.gateway.routes.http); nothing here knows a status code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from common.errors import ProblemCode


@dataclass(frozen=True)
class FilePart:
    """A file of a form, spooled by the web framework: a seekable file and its size, if known."""

    file: BinaryIO
    size: int | None


FormFields = Mapping[str, str | FilePart]
"""The fields of a multipart form by name (the last one of a repeated name): text or a file."""


class ServiceError(Exception):
    """A request the service refuses.

    `detail` is a message, or a list of located errors (`loc`, `msg`, `type`) whose `loc` starts
    with where in the request the error is ("body", "query"); `code` a precise cause, when there is
    one (else the answer's status names it).
    """

    def __init__(self, detail: str | list[dict[str, Any]], code: ProblemCode | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else "; ".join(e["msg"] for e in detail))
        self.detail = detail
        self.code = code


class InvalidRequest(ServiceError):
    """Malformed or invalid fields, an input that fails its checks, a reused Idempotency-Key."""


class TooLarge(ServiceError):
    """A body or an input over its size limit."""


class UnsupportedMedia(ServiceError):
    """An input that is no image or video the service reads, or a body of the wrong content type."""


class Forbidden(ServiceError):
    """A missing, invalid or expired grant (an upload signature)."""


class NotFound(ServiceError):
    """No such resource for this caller (also another caller's, or a malformed id)."""


class Conflict(ServiceError):
    """The resource's state forbids the operation now (or a duplicate request is still in progress)."""


class Gone(ServiceError):
    """The resource existed but is no longer stored."""


def invalid(
    errors: Sequence[Mapping[str, Any]], *loc: str | int, code: ProblemCode | None = None
) -> InvalidRequest:
    """InvalidRequest of `errors` (pydantic's or ours) located under ("body", *loc)."""
    detail = [
        {"loc": ["body", *loc, *e.get("loc", ())], "msg": e["msg"], "type": e.get("type", "value_error")}
        for e in errors
    ]
    return InvalidRequest(detail, code)
