"""HTTP adapters the routes share: answers to the services' refusals, reading a form within limits,
and the fields of a parsed form."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from service.gateway.problems import from_service
from service.gateway.services import FilePart, FormFields, InvalidRequest, ServiceError, TooLarge

MAX_JSON_BODY = 64 * 1024
"""The most bytes of JSON text a request may send: a JSON body, or a text field of a form."""


@contextmanager
def answering() -> Iterator[None]:
    """Raise a service's refusal inside the block as its HTTP error (a Problem)."""
    try:
        yield
    except ServiceError as exc:
        raise from_service(exc) from exc


@asynccontextmanager
async def reading_form(
    request: Request, *, max_files: int, max_fields: int, max_part_size: int
) -> AsyncIterator[FormData]:
    """The request's multipart form, parsed within these limits and closed after the block.

    The parser's refusals become the services' own: a text field over `max_part_size` is TooLarge
    (413, like every size limit), too many parts or a malformed body InvalidRequest (422).
    """
    try:
        form = await request.form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)
    except HTTPException as exc:
        if exc.status_code != 400:
            raise
        message = str(exc.detail)
        if "exceeded maximum size" in message:
            raise TooLarge(f"a form field other than a file is at most {max_part_size} bytes") from exc
        raise InvalidRequest([{"loc": ["body"], "msg": message, "type": "malformed_form"}]) from exc
    try:
        yield form
    finally:
        await form.close()


def form_fields(form: FormData) -> FormFields:
    """A parsed multipart form as the services take it: text, or spooled files (last one per name)."""
    return {
        name: FilePart(value.file, value.size) if isinstance(value, UploadFile) else value
        for name, value in form.items()
    }
