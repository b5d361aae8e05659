"""The inputs of a request, checked before anything is stored or queued: a form's fields (text JSON,
spooled files) and references to inputs (a URL, an upload id), each file by its content (service.media).

Jobs and live sessions take their inputs through these; a refusal names the field (`loc`) and the
reason (`type`, a media check's code), as `invalid` writes it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from pydantic import BaseModel, ValidationError

from service.contract import InputLocation
from service.gateway.services import FilePart, FormFields, InvalidRequest, TooLarge, UnsupportedMedia, invalid
from service.gateway.state import Gateway
from service.media import (
    HEAD_BYTES,
    MediaLimits,
    MediaRejected,
    inspect_media,
    looks_like_template,
    max_template_bytes,
)
from service.storage import ObjectNotFound, ReadStream
from service.urls import S3Location, UnsafeURL, check_url

M = TypeVar("M", bound=BaseModel)
_HASH_CHUNK = 1024 * 1024


def check_fields(fields: FormFields, allowed: frozenset[str]) -> None:
    """Refuse a form with fields outside `allowed`."""
    unknown = sorted(set(fields) - allowed)
    if unknown:
        msg = f"unknown form fields {unknown}; allowed: {', '.join(sorted(allowed))}"
        raise invalid([{"msg": msg, "type": "extra_forbidden"}])


def sha256_of(file: ReadStream | BinaryIO) -> str:
    """The hex sha256 of what is left in `file`."""
    digest = hashlib.sha256()
    while chunk := file.read(_HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass
class CheckedFile:
    """A form's file, checked: spooled on disk, its content type sniffed, hashed."""

    name: str
    file: BinaryIO
    content_type: str
    sha256: str


def json_field(value: object, model: type[M], name: str) -> M:
    """A text field of JSON as `model` (its defaults when the field is empty or absent)."""
    if value is None or value == "":
        return model()
    if not isinstance(value, str):
        raise invalid([{"msg": f"'{name}' must be a JSON text field", "type": "type_error"}], name)
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        raise invalid(exc.errors(include_url=False), name) from exc


def refused(exc: MediaRejected, *loc: str) -> UnsupportedMedia | InvalidRequest:
    """The refusal of an input by its content: UnsupportedMedia if it is no media we read, else invalid."""
    if exc.code == "unsupported_media" and len(loc) == 1:
        return UnsupportedMedia(f"'{loc[0]}' is {exc.message}", exc.code)
    return invalid([{"msg": f"'{loc[0]}': {exc.message}", "type": exc.code}], *loc, code=exc.code)


def file_part(fields: FormFields, name: str) -> FilePart:
    """The file field `name` (invalid when it is missing or text)."""
    part = fields.get(name)
    if not isinstance(part, FilePart):
        raise invalid([{"msg": f"'{name}' must be a file part", "type": "missing"}], name)
    return part


def inspect_part(gateway: Gateway, part: FilePart, name: str) -> CheckedFile:
    """Check size and content of a spooled multipart file, and hash it."""
    max_bytes = gateway.settings.max_input_bytes
    size = part.size if part.size is not None else 0
    if size > max_bytes:
        raise TooLarge(f"'{name}' is larger than {max_bytes} bytes")
    if size == 0:
        raise invalid([{"msg": f"'{name}' is empty", "type": "value_error"}], name)
    file = part.file
    try:
        limits = MediaLimits.from_settings(gateway.settings)
        info = inspect_media(file, size, limits, motion_templates=name == "driving")
    except MediaRejected as exc:
        raise refused(exc, name) from exc
    file.seek(0)
    digest = sha256_of(file)
    file.seek(0)
    return CheckedFile(name=name, file=file, content_type=info.content_type, sha256=digest)


def resolve_reference(gateway: Gateway, name: str, url: str | None, upload_id: str | None) -> InputLocation:
    """Check a URL or an upload id of a JSON request and turn it into an input location."""
    settings = gateway.settings
    if url is not None:
        try:
            checked = check_url(
                url, allow_private=settings.allow_private_urls, s3_buckets=settings.s3_input_buckets
            )
        except UnsafeURL as exc:
            raise invalid([{"msg": str(exc), "type": "url_refused"}], name, "url") from exc
        if isinstance(checked, S3Location):
            return InputLocation(url=f"s3://{checked.bucket}/{checked.key}")
        return InputLocation(url=checked)
    key = f"uploads/{upload_id}"
    try:
        size = gateway.store.size(key)
        head = gateway.store.read_head(key, HEAD_BYTES)
    except ObjectNotFound as exc:
        msg = f"upload {upload_id} not found (not uploaded yet, or expired)"
        raise invalid([{"msg": msg, "type": "upload_missing"}], name, "upload_id") from exc
    if size > settings.max_input_bytes:
        raise TooLarge(f"upload {upload_id} is larger than {settings.max_input_bytes}")
    limits = MediaLimits.from_settings(settings)
    templates = name == "driving"
    if templates and looks_like_template(head) and len(head) < size <= max_template_bytes(limits.max_frames):
        head = gateway.store.read_head(key, size)  # a template's directory is at its end: read it whole
    try:
        info = inspect_media(io.BytesIO(head), size, limits, available=len(head), motion_templates=templates)
    except MediaRejected as exc:
        raise refused(exc, name, "upload_id") from exc
    return InputLocation(key=key, content_type=info.content_type)
