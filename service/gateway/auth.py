"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, checked by sha256 digest."""

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.gateway.state import Gateway, get_gateway

OPEN_SCOPE = "open"
"""The owner of every job when no API keys are configured."""

bearer_scheme = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


def require_api_key(
    gateway: Annotated[Gateway, Depends(get_gateway)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    header_key: Annotated[str | None, Security(api_key_scheme)],
) -> str:
    """The caller's scope: the sha256 digest of its key, or OPEN_SCOPE when no keys are configured.

    Raises 401 when keys are configured and none of them was presented.
    """
    accepted = gateway.settings.api_keys
    if not accepted:
        return OPEN_SCOPE
    presented = bearer.credentials if bearer is not None else header_key
    if presented:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        if any(hmac.compare_digest(digest, key) for key in accepted):
            return digest
    raise HTTPException(
        status_code=401, detail="missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
    )


ApiScope = Annotated[str, Depends(require_api_key)]
