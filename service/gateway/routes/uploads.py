"""/v1/uploads: direct uploads of large inputs, then referenced by `upload_id` in a JSON job."""

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.contract import ID_PATTERN, Upload, UploadRequest
from service.gateway.auth import ApiScope
from service.gateway.state import Gateway, get_gateway
from service.media import MediaLimits, MediaRejected, inspect_media

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
GatewayDep = Annotated[Gateway, Depends(get_gateway)]


@router.post(
    "",
    operation_id="create_upload",
    status_code=201,
    response_model=Upload,
    summary="Get a URL to upload one input file to",
    responses={413: {"description": "The announced size is over the limit."}},
)
def create_upload(
    request: Request,
    gateway: GatewayDep,
    scope: ApiScope,
    body: Annotated[UploadRequest | None, Body()] = None,
) -> Upload:
    """A presigned S3 POST form, or (local store) a signed form on this gateway. POST the `fields`
    and then the file as form field `file` to `url`; then use `upload_id` in a JSON job."""
    settings = gateway.settings
    max_bytes = settings.max_input_bytes
    if body is not None and body.size_bytes is not None and body.size_bytes > max_bytes:
        raise HTTPException(status_code=413, detail=f"inputs are at most {max_bytes} bytes")
    upload_id = uuid.uuid4().hex
    expires = int(time.time()) + settings.presign_expiry_s
    post = gateway.store.presigned_post(
        f"uploads/{upload_id}", max_bytes=max_bytes, expires_s=settings.presign_expiry_s
    )
    if post is not None:
        url, fields = post.url, post.fields
    else:
        url = f"{gateway.base_url(request)}/v1/uploads/{upload_id}"
        signature = gateway.signer.sign(upload_id, expires, max_bytes)
        fields = {"expires": str(expires), "max_bytes": str(max_bytes), "signature": signature}
    return Upload(
        upload_id=upload_id,
        url=url,
        fields=fields,
        max_bytes=max_bytes,
        expires_at=datetime.fromtimestamp(expires, tz=UTC),
    )


@router.post(
    "/{upload_id}",
    operation_id="send_upload",
    status_code=204,
    response_class=Response,
    summary="Receive an upload (local store only; authorised by the signed form fields)",
    responses={
        403: {"description": "Missing, invalid or expired signature."},
        404: {"description": "This gateway's store takes uploads directly."},
        413: {"description": "The file is over the signed size limit."},
        415: {"description": "The file is not an image or video."},
        422: {"description": "The file is truncated, malformed or over the media limits."},
    },
)
async def send_upload(
    upload_id: Annotated[str, Path(pattern=ID_PATTERN)], request: Request, gateway: GatewayDep
) -> Response:
    """Store the form's `file` under this upload id, if the form's signature grants it."""
    if gateway.settings.storage_backend != "local":
        raise HTTPException(status_code=404, detail="upload with the presigned form from POST /v1/uploads")
    async with request.form(max_files=1, max_fields=3, max_part_size=1024) as form:
        try:
            expires = int(str(form.get("expires")))
            max_bytes = int(str(form.get("max_bytes")))
        except ValueError as exc:
            raise HTTPException(status_code=403, detail="missing or malformed signed fields") from exc
        signature = str(form.get("signature") or "")
        if not gateway.signer.verify(upload_id, expires, max_bytes, signature):
            raise HTTPException(status_code=403, detail="invalid or expired upload signature")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(status_code=422, detail="form field 'file' must be a file")
        if upload.size is None or upload.size > max_bytes:
            raise HTTPException(status_code=413, detail=f"uploads are at most {max_bytes} bytes")
        limits = MediaLimits.from_settings(gateway.settings)
        try:
            info = await run_in_threadpool(inspect_media, upload.file, upload.size, limits)
        except MediaRejected as exc:
            if exc.code == "unsupported_media":
                raise HTTPException(status_code=415, detail=f"the file is {exc.message}") from exc
            detail = [{"loc": ["body", "file"], "msg": exc.message, "type": exc.code}]
            raise HTTPException(status_code=422, detail=detail) from exc
        await upload.seek(0)
        await run_in_threadpool(gateway.store.put, f"uploads/{upload_id}", upload.file, info.content_type)
    return Response(status_code=204)
