"""HTTP adapters the routes share: answers to the services' refusals, and the fields of a parsed form."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException
from starlette.datastructures import FormData, UploadFile

from service.gateway.services import (
    Conflict,
    FilePart,
    Forbidden,
    FormFields,
    Gone,
    InvalidRequest,
    NotFound,
    ServiceError,
    TooLarge,
    UnsupportedMedia,
)

STATUS: dict[type[ServiceError], int] = {
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    TooLarge: 413,
    UnsupportedMedia: 415,
    InvalidRequest: 422,
}
"""The status code that answers each refusal."""


def http_error(exc: ServiceError) -> HTTPException:
    """The HTTP error answering a service's refusal: its status code, its detail as the body's."""
    status = next((STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS), 400)
    return HTTPException(status_code=status, detail=exc.detail)


@contextmanager
def answering() -> Iterator[None]:
    """Raise a service's refusal inside the block as its HTTP error."""
    try:
        yield
    except ServiceError as exc:
        raise http_error(exc) from exc


def form_fields(form: FormData) -> FormFields:
    """A parsed multipart form as the services take it: text, or spooled files (last one per name)."""
    return {
        name: FilePart(value.file, value.size) if isinstance(value, UploadFile) else value
        for name, value in form.items()
    }
