"""A live session from Python: send camera frames at their own rate, receive the animated frames.

    with Client(url, api_key) as client:
        grant = client.open_live("portrait.jpg", options={"output_kind": "crop"})
    with LiveConnection(grant.websocket_url) as live:
        live.send_frame(jpeg_bytes)          # any rate: the server keeps only the latest waiting frame
        item = live.receive(timeout=5)       # a LiveFrame (JPEG + its stats), or an event message

A reader thread takes every message as it comes, so a client that sends without waiting never
blocks the server; `receive` hands them out in order. The protocol is docs/api.md's "Live sessions".
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from common.live import SERVER_MESSAGE, Closing, Dropped, ErrorMessage, Ready, Stats
from service.live import RELAY_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class LiveFrame:
    """An animated frame: its JPEG bytes and its stats (stats.seq: the driving frame it answers)."""

    jpeg: bytes
    stats: Stats


@dataclass(frozen=True)
class Closed:
    """The session's WebSocket closed: its close code and reason."""

    code: int
    reason: str


Received = LiveFrame | Dropped | ErrorMessage | Closing | Closed
"""What `LiveConnection.receive` hands out."""


class LiveSessionRefused(Exception):
    """The session closed before it was ready (its token refused, or its source)."""


class LiveConnection:
    """A connected live session: `ready` is the server's first message once the source is prepared."""

    def __init__(
        self,
        websocket_url: str,
        *,
        open_timeout: float = 10.0,
        ready_timeout: float = 120.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._ws: ClientConnection = connect(
            websocket_url,
            additional_headers=headers,
            max_size=RELAY_MAX_MESSAGE_BYTES,
            open_timeout=open_timeout,
            compression=None,
            legacy=True,
        )
        self._inbox: queue.Queue[Received | Ready] = queue.Queue()
        self.closed: Closed | None = None
        self._reader = threading.Thread(target=self._read, name="live-client-reader", daemon=True)
        self._reader.start()
        first = self._next(ready_timeout)
        events: list[Received | Ready] = []
        while not isinstance(first, Ready):
            events.append(first)
            if isinstance(first, Closed):
                self.close()
                raise LiveSessionRefused(f"the session closed before it was ready: {events}")
            first = self._next(ready_timeout)
        self.ready = first

    def __enter__(self) -> LiveConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session (normally: 1000) and wait for the reader."""
        self._ws.close()
        self._reader.join(timeout=10)

    def _read(self) -> None:
        jpeg: bytes | None = None
        try:
            for message in self._ws:
                if isinstance(message, bytes):
                    jpeg = message
                    continue
                event = SERVER_MESSAGE.validate_json(message)
                if isinstance(event, Stats) and jpeg is not None:
                    self._inbox.put(LiveFrame(jpeg, event))
                    jpeg = None
                elif not isinstance(event, Stats):
                    self._inbox.put(event)
        except ConnectionClosed:
            pass
        close = self._ws.protocol.close_rcvd
        self.closed = Closed(close.code, close.reason) if close is not None else Closed(1006, "")
        self._inbox.put(self.closed)

    def _next(self, timeout: float | None) -> Received | Ready:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"nothing from the live session in {timeout} s") from None

    def receive(self, timeout: float | None = None) -> Received:
        """The next animated frame or event, in order (Closed last); TimeoutError after `timeout` s."""
        item = self._next(timeout)
        assert not isinstance(item, Ready), "a session says ready once, before anything else"
        return item

    def send_frame(self, jpeg: bytes) -> None:
        """Send one driving frame (JPEG bytes)."""
        self._ws.send(jpeg)

    def _control(self, message: dict[str, Any]) -> None:
        self._ws.send(json.dumps(message))

    def reset(self) -> None:
        """Take the next frame as the motion reference."""
        self._control({"type": "reset"})

    def set_options(self, options: dict[str, Any]) -> None:
        """Change LiveOptions fields from the next frame."""
        self._control({"type": "options", "options": options})

    def set_expression(self, expression: dict[str, Any]) -> None:
        """Expression controls on top of the driving motion ({}: none)."""
        self._control({"type": "expression", "expression": expression})
