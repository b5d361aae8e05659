"""ASGI middleware bounding the size of request bodies while they stream in."""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.problems import problem_response


class RequestTooLarge(HTTPException):
    """A request body went over the limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than {limit} bytes")


class BodySizeLimitMiddleware:
    """Answer 413 as soon as a body is known to exceed `max_bytes`.

    A declared Content-Length over the limit is refused before the app runs. Otherwise the bytes
    are counted as the app reads them, and reading past the limit raises `RequestTooLarge`
    (handled by FastAPI like any HTTPException, or turned into a 413 here), so an oversized
    chunked body is never read, let alone buffered, in full.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a byte-counting `receive`."""
        if scope["type"] != "http" or (scope["method"] in _BODILESS and not _has_body(scope)):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = RequestTooLarge(self.max_bytes).detail
        response = problem_response(scope.get("path"), 413, detail, headers={"Connection": "close"})
        await response(scope, receive, send)


_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods whose requests come without a body unless they declare one (the read path skips the count)."""


def _has_body(scope: Scope) -> bool:
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in scope.get("headers", []))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
