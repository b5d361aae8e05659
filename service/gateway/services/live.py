"""Live sessions: open one (check the source, take a worker's slot, hand out a single-use token), and
relay a client's WebSocket to the worker that runs it.

Opening blocks (file, store and Redis I/O): async callers run `open_session` in a thread. The relay
is async: two pumps, client -> worker and worker -> client, until either side closes. A worker that
goes away without a close frame (it crashed, or the network failed) ends the client's session with
`closing` worker_lost (4004); a client that goes away closes the worker's side, which frees the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from fastapi import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from common.live import Closing, LiveOptions, SessionGrant
from service.gateway.services import FilePart, FormFields, invalid
from service.gateway.services.inputs import (
    check_fields,
    file_part,
    inspect_part,
    json_field,
    resolve_reference,
    sha256_of,
)
from service.gateway.state import Gateway
from service.live import (
    RELAY_HEADER,
    RELAY_MAX_MESSAGE_BYTES,
    LiveRegistry,
    Route,
    session_source_key,
    worker_url,
)

log = structlog.get_logger("gateway")

FIELDS = frozenset({"source", "upload_id", "options"})
"""The fields of a session's form: the file `source` or an `upload_id`, and `options` (JSON)."""


class NoLiveSlot(Exception):
    """No live worker has a free slot now; retry after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("no live worker has a free slot; retry later")
        self.retry_after_s = retry_after_s


@dataclass
class _Source:
    """A session's source: open, its media type and sha256; `key` when it is already in the store."""

    content_type: str
    sha256: str
    file: FilePart | None = None
    key: str | None = None


def _image_only(content_type: str, *loc: str) -> None:
    if not content_type.startswith("image/"):
        msg = f"'{loc[0]}' is a video; a live session animates a portrait image"
        raise invalid([{"msg": msg, "type": "unsupported_input"}], *loc)


def _source(gateway: Gateway, fields: FormFields) -> _Source:
    """The form's source (a file, or an upload), checked by content: an image."""
    if ("source" in fields) == ("upload_id" in fields):
        raise invalid([{"msg": "give a 'source' file or an 'upload_id'", "type": "missing"}])
    if "source" in fields:
        part = inspect_part(gateway, file_part(fields, "source"), "source")
        _image_only(part.content_type, "source")
        file = fields["source"]
        assert isinstance(file, FilePart), "file_part checked it"
        return _Source(part.content_type, part.sha256, file=file)
    upload_id = fields["upload_id"]
    if not isinstance(upload_id, str) or not upload_id:
        raise invalid([{"msg": "'upload_id' must be a text field", "type": "type_error"}], "upload_id")
    location = resolve_reference(gateway, "upload_id", None, upload_id)
    assert location.key is not None and location.content_type is not None, "an upload resolves to a key"
    _image_only(location.content_type, "upload_id")
    stream = gateway.store.open(location.key)
    try:
        digest = sha256_of(stream)
    finally:
        stream.close()
    return _Source(location.content_type, digest, key=location.key)


def open_session(
    gateway: Gateway, registry: LiveRegistry, fields: FormFields, owner: str, base_url: str
) -> SessionGrant:
    """Check the form, take a slot, store the source and record the session: its grant (websocket_url
    with a single-use token). InvalidRequest, TooLarge, UnsupportedMedia for the form; NoLiveSlot."""
    check_fields(fields, FIELDS)
    options = json_field(fields.get("options"), LiveOptions, "options")
    source = _source(gateway, fields)
    session_id = uuid.uuid4().hex
    reservation = registry.reserve(session_id)
    if reservation is None:
        raise NoLiveSlot(gateway.settings.live_retry_after_s)
    source_key = source.key or session_source_key(session_id)
    try:
        if source.file is not None:
            gateway.store.put(source_key, source.file.file, source.content_type)
        token, expires = registry.create(
            session_id,
            reservation,
            owner=owner,
            options=options.model_dump_json(),
            source_key=source_key,
            source_digest=source.sha256,
        )
    except BaseException:
        registry.release(session_id, reservation.worker)
        raise
    ws_base = "ws" + base_url.removeprefix("http")  # http -> ws, https -> wss
    log.info("live.session_opened", session_id=session_id, worker=reservation.worker)
    return SessionGrant(
        session_id=session_id,
        websocket_url=f"{ws_base}/v1/live/sessions/{session_id}/ws?token={token}",
        token_expires_at=datetime.fromtimestamp(expires, tz=UTC),
        options=options,
        limits=gateway.settings.live_limits(),
    )


# --- the relay ----------------------------------------------------------------------------------------


async def _to_worker(client: WebSocket, worker: ClientConnection) -> None:
    """Client -> worker until the client leaves (then the worker's side is closed normally)."""
    while True:
        message = await client.receive()
        if message["type"] == "websocket.disconnect":
            await worker.close(1000, "the client left")
            return
        if message.get("bytes") is not None:
            await worker.send(message["bytes"])
        elif message.get("text") is not None:
            await worker.send(message["text"])


async def _to_client(worker: ClientConnection, client: WebSocket) -> Closing | None:
    """Worker -> client until the worker closes: None when it closed with a close frame (its code is
    the client's), else the worker_lost closing."""
    try:
        async for message in worker:
            if isinstance(message, bytes):
                await client.send_bytes(message)
            else:
                await client.send_text(message)
    except ConnectionClosed:
        pass
    if worker.protocol.close_rcvd is not None:
        return None
    return Closing.of("worker_lost", "the worker serving this session stopped; open a new session")


async def relay(client: WebSocket, route: Route, session_id: str) -> None:
    """Relay an accepted client WebSocket to its session's worker, both ways, until one side ends."""
    url = worker_url(route.address, session_id)
    try:
        worker = await connect(
            url,
            additional_headers={RELAY_HEADER: route.relay_token},
            max_size=RELAY_MAX_MESSAGE_BYTES,
            compression=None,
            open_timeout=10,
        )
    except (OSError, InvalidHandshake, InvalidStatus, TimeoutError) as exc:
        log.warning("live.worker_unreachable", session_id=session_id, worker=route.worker, error=str(exc))
        await _close(client, Closing.of("worker_lost", "the worker of this session cannot be reached"))
        return
    upstream = asyncio.create_task(_to_worker(client, worker), name="live-relay-up")
    try:
        lost = await _to_client(worker, client)
    finally:
        upstream.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, ConnectionClosed, RuntimeError):
            await upstream
        await worker.close()
    if lost is not None:
        log.warning("live.worker_lost", session_id=session_id, worker=route.worker)
        await _close(client, lost)
    else:
        close = worker.protocol.close_rcvd
        assert close is not None, "_to_client returns None only after a close frame"
        code, reason = close.code, close.reason
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await client.close(code if code != 1005 else 1000, reason)


async def _close(client: WebSocket, closing: Closing) -> None:
    """Say `closing` to the client and close with its code (if the client is still there)."""
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await client.send_text(closing.model_dump_json())
        await client.close(closing.code, closing.reason)
