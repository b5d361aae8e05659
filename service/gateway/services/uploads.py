"""Uploads: grants to upload one large input, and (local store) receiving the upload they grant.

A JSON job then names the input by `upload_id` (service.gateway.services.jobs checks it there again).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from service.contract import Upload
from service.gateway.services import (
    FilePart,
    Forbidden,
    FormFields,
    InvalidRequest,
    NotFound,
    TooLarge,
    UnsupportedMedia,
    invalid,
)
from service.gateway.state import Gateway
from service.media import MediaLimits, MediaRejected, inspect_media


def grant(gateway: Gateway, base_url: str, size_bytes: int | None = None) -> Upload:
    """A presigned S3 POST form, or (local store) a form signed by this gateway at `base_url`.

    InvalidRequest (code too_large) when the announced `size_bytes` is over the input limit: the
    spec gives the field that maximum, and a field out of its range is a 422 like any other.
    """
    settings = gateway.settings
    max_bytes = settings.max_input_bytes
    if size_bytes is not None and size_bytes > max_bytes:
        error = {
            "loc": ["size_bytes"],
            "msg": f"inputs are at most {max_bytes} bytes",
            "type": "less_than_equal",
        }
        raise invalid([error], code="too_large")
    upload_id = uuid.uuid4().hex
    expires = int(time.time()) + settings.presign_expiry_s
    post = gateway.store.presigned_post(
        f"uploads/{upload_id}", max_bytes=max_bytes, expires_s=settings.presign_expiry_s
    )
    if post is not None:
        url, fields = post.url, post.fields
    else:
        url = f"{base_url}/v1/uploads/{upload_id}"
        signature = gateway.signer.sign(upload_id, expires, max_bytes)
        fields = {"expires": str(expires), "max_bytes": str(max_bytes), "signature": signature}
    return Upload(
        upload_id=upload_id,
        url=url,
        fields=fields,
        max_bytes=max_bytes,
        expires_at=datetime.fromtimestamp(expires, tz=UTC),
    )


def require_direct_uploads(gateway: Gateway) -> None:
    """NotFound unless this gateway receives uploads itself (local store; S3 takes them directly)."""
    if gateway.settings.storage_backend != "local":
        raise NotFound("upload with the presigned form from POST /v1/uploads")


def receive(gateway: Gateway, upload_id: str, fields: FormFields) -> None:
    """Store the form's `file` as upload `upload_id`, if the form's signed fields grant it.

    Forbidden without a valid grant; TooLarge over its size; UnsupportedMedia or InvalidRequest
    when the file is no media we read, or is truncated, malformed or over the media limits.
    """
    require_direct_uploads(gateway)
    try:
        expires = int(str(fields.get("expires")))
        max_bytes = int(str(fields.get("max_bytes")))
    except ValueError as exc:
        raise Forbidden("missing or malformed signed fields") from exc
    signature = str(fields.get("signature") or "")
    if not gateway.signer.verify(upload_id, expires, max_bytes, signature):
        raise Forbidden("invalid or expired upload signature")
    upload = fields.get("file")
    if not isinstance(upload, FilePart):
        raise InvalidRequest("form field 'file' must be a file")
    if upload.size is None or upload.size > max_bytes:
        raise TooLarge(f"uploads are at most {max_bytes} bytes")
    limits = MediaLimits.from_settings(gateway.settings)
    try:
        info = inspect_media(upload.file, upload.size, limits, motion_templates=True)
    except MediaRejected as exc:
        if exc.code == "unsupported_media":
            raise UnsupportedMedia(f"the file is {exc.message}", exc.code) from exc
        raise invalid([{"msg": exc.message, "type": exc.code}], "file", code=exc.code) from exc
    upload.file.seek(0)
    gateway.store.put(f"uploads/{upload_id}", upload.file, info.content_type)
