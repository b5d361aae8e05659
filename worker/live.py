"""The worker's live server: live sessions on the worker's loaded engine, over WebSocket.

`LiveServer` runs beside the job loop (its own thread and asyncio loop) on the same engine. The
gateways connect to it (`/sessions/{id}`, with the session's relay token) and relay a client's
frames; workers stay private. Every `live_heartbeat_s` it advertises its address, slots and running
sessions in Redis (service.live) and adds its frame counts and latencies to the shared metrics.

Per session: the latest driving frame waits in a one-frame slot (a newer one replaces it: `dropped`
superseded); decoding, tracking and cropping run on a thread pool, M and W+G on the batcher's
inference thread (engines.live.batcher), compose and JPEG on the pool again; the answers wait in a
bounded outbox (the oldest is dropped for a client that does not read: `dropped` slow_client).
Idle and overlong sessions are closed with their close code; so is every session when the server
stops (worker_lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import redis
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from common.errors import LivePortraitError
from common.live import (
    CloseReason,
    Closing,
    Dropped,
    ErrorMessage,
    LiveError,
    LiveOptions,
    OptionsChange,
    Ready,
    Reset,
    Stats,
    changed_options,
    expression_controls,
    parse_client_message,
)
from service import metrics
from service.live import (
    RELAY_HEADER,
    RELAY_MAX_MESSAGE_BYTES,
    LiveRegistry,
    SessionRecord,
    owns_source,
    session_id_of,
)
from service.queue import connect
from service.settings import Settings
from service.storage import Store, make_store

if TYPE_CHECKING:
    from engines.engine import Engine
    from engines.live.batcher import FrameBatcher
    from engines.live.session import DrivingFrame, LiveSession
    from engines.source import PreparedSource
    from engines.source_cache import SourceCache

log = structlog.get_logger("worker.live")

EVENTS_KEPT = 64
"""Text messages (events) an outbox keeps for a client that does not read; older ones are dropped."""


@dataclass
class _Arrival:
    seq: int
    data: bytes
    at: float


class LatestFrame:
    """A one-frame slot: `put` replaces what waits (and returns it), `get` waits for a frame."""

    def __init__(self) -> None:
        self._item: _Arrival | None = None
        self._ready = asyncio.Event()

    def put(self, item: _Arrival) -> _Arrival | None:
        replaced, self._item = self._item, item
        self._ready.set()
        return replaced

    async def get(self) -> _Arrival:
        while self._item is None:
            self._ready.clear()
            await self._ready.wait()
        item, self._item = self._item, None
        return item


class Outbox:
    """What a session sends, in order: events (text) first, then frames (a JPEG and its stats), at most
    `frames` of them (the oldest is dropped), then the closing message."""

    def __init__(self, frames: int) -> None:
        self.max_frames = frames
        self.frames: deque[tuple[int, bytes, str]] = deque()
        self.events: deque[str] = deque(maxlen=EVENTS_KEPT)
        self.closing: Closing | None = None
        self.wake = asyncio.Event()

    def frame(self, seq: int, data: bytes, stats: str) -> int | None:
        """Queue an answer; returns the seq of the one dropped to make room, if any."""
        dropped = self.frames.popleft()[0] if len(self.frames) >= self.max_frames else None
        self.frames.append((seq, data, stats))
        self.wake.set()
        return dropped

    def event(self, message: str) -> None:
        self.events.append(message)
        self.wake.set()

    def close(self, closing: Closing) -> None:
        """Send `closing` after what is queued, then close (the first reason given wins)."""
        if self.closing is None:
            self.closing = closing
        self.wake.set()


@dataclass
class LiveCounters:
    """Frames and latencies since the last flush to the shared metrics."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    sessions: int = 0
    latencies: list[float] = field(default_factory=list)

    def take(self) -> LiveCounters:
        """These counts, and zero them."""
        taken = LiveCounters(self.frames_in, self.frames_out, self.dropped, self.sessions, self.latencies)
        self.frames_in = self.frames_out = self.dropped = self.sessions = 0
        self.latencies = []
        return taken


def advertised_address(settings: Settings, port: int) -> str:
    """host:port the gateways reach this worker's live server at."""
    if settings.live_advertise_address:
        return settings.live_advertise_address
    host = socket.gethostname() if settings.live_host in ("0.0.0.0", "::", "") else settings.live_host
    return f"{host}:{port}"


class LiveServer:
    """Live sessions on one engine, served over WebSocket and advertised in Redis."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        name: str,
        cache: SourceCache | None = None,
        store: Store | None = None,
        batcher: FrameBatcher | None = None,
    ) -> None:
        from engines.live.batcher import FrameBatcher

        self.settings = settings
        self.engine = engine  # its analyzer is safe to call from threads (the Haar cascade holds a lock)
        self.name = name
        self.cache = cache
        self.store = store or make_store(settings)
        self.redis = connect(settings)
        self.registry = LiveRegistry(self.redis, settings)
        self.metrics_key = f"{settings.queue_prefix}:metrics"
        self.batcher = batcher or FrameBatcher(
            self.engine,
            window_s=settings.live_batch_window_ms / 1000,
            max_batch=settings.live_max_batch or engine.frame_batch,
        )
        self.limits = settings.live_limits()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="live-frames")
        self.face_checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-face-checks")
        """Where the sessions' periodic checks of the driving face run, off their frames' path."""
        self.counters = LiveCounters()
        self.address = ""
        self._sessions: dict[str, Outbox] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-server", daemon=True)
        self._server: Server | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    # --- life -------------------------------------------------------------------------------------

    def start(self) -> str:
        """Bind, advertise, serve in a thread; returns the advertised address."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        log.info("live.started", worker=self.name, address=self.address, slots=self.settings.live_slots)
        return self.address

    async def _start(self) -> None:
        self._server = await serve(
            self._connection,
            self.settings.live_host,
            self.settings.live_port,
            max_size=RELAY_MAX_MESSAGE_BYTES,
            compression=None,
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.address = advertised_address(self.settings, port)
        await asyncio.to_thread(self._advertise)
        self._heartbeat = asyncio.create_task(self._beat(), name="live-heartbeat")

    def stop(self) -> None:
        """Close every session (worker_lost), leave routing, stop serving."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.batcher.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)  # a frame mid-compose ends: no torch op at exit
        self.face_checks.shutdown(wait=True, cancel_futures=True)
        self.redis.close()
        log.info("live.stopped", worker=self.name)

    async def _stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        with contextlib.suppress(redis.exceptions.RedisError):
            await asyncio.to_thread(self.registry.withdraw, self.name)
        for outbox in list(self._sessions.values()):
            outbox.close(Closing.of("worker_lost", "the worker is shutting down"))
        if self._server is not None:
            self._server.close(close_connections=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=10)

    def _advertise(self) -> None:
        """The heartbeat: advertise, delete the sources of sessions never connected, add the metrics."""
        self.registry.advertise(self.name, self.address, self.settings.live_slots, list(self._sessions))
        for key in self.registry.expired_grants():
            if owns_source(key):
                self.store.delete(key)
        counts = self.counters.take()
        metrics.record_live(
            self.redis,
            self.metrics_key,
            frames_in=counts.frames_in,
            frames_out=counts.frames_out,
            dropped=counts.dropped,
            sessions=counts.sessions,
            latencies=counts.latencies,
        )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.live_heartbeat_s)
            try:
                await asyncio.to_thread(self._advertise)
            except Exception as exc:  # Redis or the store away: the next heartbeat tries again
                log.warning("live.heartbeat_failed", error=str(exc))

    # --- a session --------------------------------------------------------------------------------

    async def _connection(self, ws: ServerConnection) -> None:
        session_id = session_id_of(ws.request.path if ws.request else "")
        relay = ws.request.headers.get(RELAY_HEADER, "") if ws.request else ""
        record = None
        if session_id is not None:
            record = await asyncio.to_thread(self.registry.session, session_id, self.name, relay)
        if record is None:
            await ws.close(1008, "unknown session")
            return
        outbox = Outbox(self.settings.live_send_queue_frames)
        self._sessions[record.session_id] = outbox
        self.counters.sessions += 1
        log.info("live.session_started", session_id=record.session_id)
        try:
            await _Connection(self, ws, record, outbox).run()
        finally:
            del self._sessions[record.session_id]
            await asyncio.to_thread(self._end, record)
            log.info("live.session_ended", session_id=record.session_id)

    def _end(self, record: SessionRecord) -> None:
        try:
            self.registry.end(record.session_id, self.name)
            if owns_source(record.source_key):
                self.store.delete(record.source_key)
        except Exception as exc:  # the lease expires by itself; the source stays (logged)
            log.warning("live.cleanup_failed", session_id=record.session_id, error=str(exc))

    def prepare(self, record: SessionRecord, options: LiveOptions) -> PreparedSource:
        """The session's source, prepared (from the cache of prepared sources when it is there)."""
        from engines.media import Limits, read_image
        from engines.source import prepare_source, require_landmarks
        from engines.source_cache import content_key

        require_landmarks(self.engine, options.animation)
        key = content_key(record.source_digest, options.animation)
        prepared = self.cache.get(key) if self.cache is not None else None
        if prepared is None:
            with tempfile.TemporaryDirectory(prefix="live-") as folder:
                path = self.store.get(record.source_key, Path(folder) / "source")
                rgb = read_image(path, Limits(max_pixels=self.settings.max_source_pixels))
            prepared = prepare_source(self.engine, rgb, options.animation)
            if self.cache is not None:
                self.cache.put(key, prepared)
        return prepared


class _Connection:
    """One session's connection on the worker: receive, process, send, watch the clock."""

    def __init__(
        self, server: LiveServer, ws: ServerConnection, record: SessionRecord, outbox: Outbox
    ) -> None:
        self.server = server
        self.ws = ws
        self.record = record
        self.outbox = outbox
        self.slot = LatestFrame()
        self.session: LiveSession | None = None
        self.started = self.last_active = time.monotonic()
        self.busy = False
        self.seq = -1

    def error(self, exc: LivePortraitError, seq: int | None = None) -> None:
        self.outbox.event(ErrorMessage(code=exc.code, message=exc.message, seq=seq).model_dump_json())

    def close(self, reason: CloseReason, message: str) -> None:
        self.outbox.close(Closing.of(reason, message))

    async def run(self) -> None:
        sender = asyncio.create_task(self._send(), name="live-send")
        tasks = [sender]
        try:
            self.session = await self._open()
            if self.session is not None:
                tasks += [asyncio.create_task(self._process(self.session), name="live-process")]
                tasks += [asyncio.create_task(self._watch(), name="live-watch")]
            await self._receive()
        finally:
            if self.session is not None:
                self.server.batcher.closed()
            for task in tasks[1:]:
                task.cancel()
            self.outbox.close(Closing.of("normal", "the session ended"))
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                await asyncio.wait_for(sender, timeout=5)
            sender.cancel()

    async def _open(self) -> LiveSession | None:
        """Prepare the source and say `ready`; on a refused source, say why and close (source_refused)."""
        from engines.live.session import LiveSession

        server = self.server
        options = LiveOptions.model_validate_json(self.record.options)
        try:
            prepared = await asyncio.to_thread(server.prepare, self.record, options)
        except LivePortraitError as exc:
            self.error(exc)
            self.close("source_refused", f"the source cannot be animated: {exc.message}")
            return None
        session = LiveSession(
            server.engine, prepared, options, server.limits.max_frame_pixels, executor=server.face_checks
        )
        height, width = prepared.crop.frame.shape[:2]
        ready = Ready(
            session_id=self.record.session_id,
            options=options,
            limits=server.limits,
            source={"width": width, "height": height},
        )
        self.outbox.event(ready.model_dump_json())
        server.batcher.opened()
        return session

    async def _receive(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                if isinstance(message, bytes):
                    self._frame(message)
                else:
                    await self._control(message)

    def _frame(self, data: bytes) -> None:
        self.seq += 1
        self.last_active = time.monotonic()
        self.server.counters.frames_in += 1
        if len(data) > self.server.limits.max_frame_bytes:
            limit = self.server.limits.max_frame_bytes
            self.error(LiveError("frame_too_large", f"a frame is at most {limit} bytes"), self.seq)
            return
        replaced = self.slot.put(_Arrival(self.seq, data, self.last_active))
        if replaced is not None:
            self.server.counters.dropped += 1
            self.outbox.event(Dropped(seq=replaced.seq, reason="superseded").model_dump_json())

    async def _control(self, text: str) -> None:
        session = self.session
        try:
            message = parse_client_message(text)
            if session is None:
                return
            if isinstance(message, Reset):
                session.reset()
            elif isinstance(message, OptionsChange):
                await self._change_options(session, changed_options(session.options, message))
            else:
                await asyncio.to_thread(session.set_expression, expression_controls(message))
        except LivePortraitError as exc:
            self.error(exc)

    async def _change_options(self, session: LiveSession, options: LiveOptions) -> None:
        from engines.source import SOURCE_OPTIONS

        before, after = session.options.animation, options.animation
        reprepare = any(getattr(before, name) != getattr(after, name) for name in SOURCE_OPTIONS)
        prepared = await asyncio.to_thread(self.server.prepare, self.record, options) if reprepare else None
        await asyncio.to_thread(session.set_options, options, prepared)

    async def _process(self, session: LiveSession) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        while True:
            arrival = await self.slot.get()
            self.busy = True
            try:
                decoded, frame, tracked = await loop.run_in_executor(
                    server.pool, _drive, session, arrival.data
                )
                rendered = await asyncio.wrap_future(server.batcher.submit(session, frame, arrival.at))
                answer = await loop.run_in_executor(server.pool, session.answer, rendered.image, frame)
            except LivePortraitError as exc:
                self.error(exc, arrival.seq)
                continue
            except Exception as exc:  # a frame that fails for an unknown cause: say so, go on
                log.exception("live.frame_failed", session_id=self.record.session_id)
                self.error(
                    LiveError("internal_error", f"the frame failed: {type(exc).__name__}"), arrival.seq
                )
                continue
            finally:
                self.busy = False
                self.last_active = time.monotonic()
            done = time.monotonic()
            latency = {
                "decode": decoded - arrival.at,
                "track": tracked - decoded,
                "wait": rendered.started - tracked,
                "render": rendered.ended - rendered.started,
                "encode": done - rendered.ended,
                "worker": done - arrival.at,
            }
            server.counters.latencies.append(latency["worker"])
            stats = Stats(
                seq=arrival.seq,
                batch=rendered.batch,
                latency_ms={k: round(v * 1000, 2) for k, v in latency.items()},
            )
            dropped = self.outbox.frame(arrival.seq, answer, stats.model_dump_json())
            if dropped is not None:
                server.counters.dropped += 1
                self.outbox.event(Dropped(seq=dropped, reason="slow_client").model_dump_json())

    async def _watch(self) -> None:
        limits = self.server.limits
        while True:
            now = time.monotonic()
            idle_end = (now if self.busy else self.last_active) + limits.idle_timeout_s
            session_end = self.started + limits.max_session_s
            if now >= session_end:
                self.close("session_expired", f"a session lasts at most {limits.max_session_s:g} s")
                return
            if now >= idle_end:
                self.close("idle_timeout", f"no driving frame for {limits.idle_timeout_s:g} s")
                return
            await asyncio.sleep(min(idle_end, session_end) - now)

    async def _send(self) -> None:
        outbox, ws = self.outbox, self.ws
        while True:
            await outbox.wake.wait()
            outbox.wake.clear()
            while outbox.events or outbox.frames:
                if outbox.events:
                    await ws.send(outbox.events.popleft())
                    continue
                _, data, stats = outbox.frames.popleft()
                await ws.send(data)
                await ws.send(stats)
                self.server.counters.frames_out += 1
            if outbox.closing is not None:
                await ws.send(outbox.closing.model_dump_json())
                await ws.close(outbox.closing.code, outbox.closing.reason)
                return


def _drive(session: LiveSession, data: bytes) -> tuple[float, DrivingFrame, float]:
    """Decode and track one frame on a pool thread: (decoded at, the driving frame, tracked at)."""
    rgb = session.decode(data)
    decoded = time.monotonic()
    frame = session.drive(rgb)
    return decoded, frame, time.monotonic()
