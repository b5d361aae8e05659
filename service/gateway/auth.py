"""API keys and rate limits: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

Keys are compared by sha256 digest (the settings hold digests only) and never logged: log lines
name a caller by `key_id`, the first 12 hex digits of its digest. With `rate_limit_per_minute`
set, every authenticated request counts against its key (without keys: its client address).
"""

import hashlib
import hmac
from typing import Annotated, Any

import structlog
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.gateway.state import Gateway, get_gateway

OPEN_SCOPE = "open"
"""The owner of every job when no API keys are configured."""

bearer_scheme = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")
log = structlog.get_logger("gateway")


def key_id(digest: str) -> str:
    """The short, loggable name of a key digest."""
    return digest[:12]


def _authenticate(gateway: Gateway, presented: str | None) -> str:
    accepted = gateway.settings.api_keys
    if not accepted:
        return OPEN_SCOPE
    if presented:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        if any(hmac.compare_digest(digest, key) for key in accepted):
            return digest
        log.info("auth.rejected", reason="unknown key", key_id=key_id(digest))
    else:
        log.info("auth.rejected", reason="no key")
    raise HTTPException(
        status_code=401, detail="missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
    )


async def _rate_limit(gateway: Gateway, request: Request, scope: str) -> None:
    limiter = gateway.limiter
    if limiter is None:
        return
    if scope == OPEN_SCOPE:
        caller = f"addr:{request.client.host if request.client else 'unknown'}"
    else:
        caller = f"key:{key_id(scope)}"
    decision = await limiter.hit(caller)
    if decision.allowed:
        return
    log.info("request.rate_limited", caller=caller, retry_after_s=decision.retry_after_s)
    raise HTTPException(
        status_code=429,
        detail=f"rate limit of {limiter.limit} requests per minute exceeded; "
        f"retry in {decision.retry_after_s} s",
        headers={
            "Retry-After": str(decision.retry_after_s),
            "RateLimit-Limit": str(limiter.limit),
            "RateLimit-Remaining": "0",
        },
    )


async def require_api_key(
    request: Request,
    gateway: Annotated[Gateway, Depends(get_gateway)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    header_key: Annotated[str | None, Security(api_key_scheme)],
) -> str:
    """The caller's scope: the sha256 digest of its key, or OPEN_SCOPE when no keys are configured.

    Raises 401 when keys are configured and none of them was presented, 429 over the rate limit.
    """
    scope = _authenticate(gateway, bearer.credentials if bearer is not None else header_key)
    await _rate_limit(gateway, request, scope)
    return scope


ApiScope = Annotated[str, Depends(require_api_key)]

AUTH_OPENAPI: dict[str, Any] = {"security": [{"HTTPBearer": []}, {"APIKeyHeader": []}]}
"""The security requirement `require_api_key` declares, for routes that call `authorize` instead."""


async def authorize(request: Request) -> str:
    """`require_api_key` without FastAPI's dependency injection (a third of a read's time), for the
    routes of the fast read path: the same keys, the same answers."""
    gateway: Gateway = request.app.state.gateway
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else ""
    scope = _authenticate(gateway, bearer or request.headers.get("x-api-key"))
    await _rate_limit(gateway, request, scope)
    return scope
