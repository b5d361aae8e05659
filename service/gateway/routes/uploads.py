"""/v1/uploads: direct uploads of large inputs, then referenced by `upload_id` in a JSON job."""

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.contract import ID_PATTERN, Upload, UploadRequest
from service.gateway.auth import ApiScope
from service.gateway.problems import AUTHENTICATED, responses
from service.gateway.routes.http import answering, form_fields, reading_form
from service.gateway.services import uploads as upload_service
from service.gateway.state import Gateway, get_gateway

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
GatewayDep = Annotated[Gateway, Depends(get_gateway)]


@router.post(
    "",
    operation_id="create_upload",
    status_code=201,
    response_model=Upload,
    summary="Get a URL to upload one input file to",
    responses=responses(*AUTHENTICATED, 400, 422),
)
def create_upload(
    request: Request,
    gateway: GatewayDep,
    scope: ApiScope,
    body: Annotated[UploadRequest | None, Body()] = None,
) -> Upload:
    """A presigned S3 POST form, or (local store) a signed form on this gateway. POST the `fields`
    and then the file as form field `file` to `url`; then use `upload_id` in a JSON job."""
    with answering():
        return upload_service.grant(gateway, gateway.base_url(request), body.size_bytes if body else None)


@router.post(
    "/{upload_id}",
    operation_id="send_upload",
    status_code=204,
    response_class=Response,
    summary="Receive an upload (local store only; authorised by the signed form fields)",
    responses=responses(403, 404, 413, 415, 422, 503),
)
async def send_upload(
    upload_id: Annotated[str, Path(pattern=ID_PATTERN)], request: Request, gateway: GatewayDep
) -> Response:
    """Store the form's `file` under this upload id, if the form's signature grants it."""
    with answering():
        upload_service.require_direct_uploads(gateway)
        async with reading_form(request, max_files=1, max_fields=3, max_part_size=1024) as form:
            await run_in_threadpool(upload_service.receive, gateway, upload_id, form_fields(form))
    return Response(status_code=204)
