"""The inference thread of live sessions: the frames of concurrent sessions rendered in one batch.

Each session has at most one frame in flight. The thread takes the first waiting frame, then waits
up to `window_s` for frames of the other open sessions (never when every open session's frame is
already in, so a lone session never waits), at most `max_batch` frames, and renders them with one
M call and one W+G call (engines.live.session.render_frames). Each caller gets its own session's
answer through a Future. On a GPU the batch fills the device; on a CPU, `max_batch` 1 renders
frames one by one in arrival order.
"""

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from engines.engine import Engine
from engines.live.session import DrivingFrame, LiveSession, render_frames

Render = Callable[[Engine, list[LiveSession], list[DrivingFrame], list[float]], list[np.ndarray | Exception]]


@dataclass(frozen=True)
class Rendered:
    """A session's rendered crop (512, 512, 3) uint8, the size of the batch it was part of, and when
    (time.monotonic) its batch started and ended."""

    image: np.ndarray
    batch: int
    started: float
    ended: float


@dataclass
class _Pending:
    session: LiveSession
    frame: DrivingFrame
    t: float
    answer: "Future[Rendered]"


class FrameBatcher:
    """Renders the frames of live sessions on one engine, batched across sessions, in one thread."""

    def __init__(
        self, engine: Engine, *, window_s: float, max_batch: int, render: Render = render_frames
    ) -> None:
        self.engine = engine
        self.window_s = window_s
        self.max_batch = max_batch
        self._render = render
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._open = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="live-inference", daemon=True)
        self._thread.start()

    def opened(self) -> None:
        """A session opened: its frames may come."""
        with self._lock:
            self._open += 1

    def closed(self) -> None:
        """A session closed: no more of its frames."""
        with self._lock:
            self._open -= 1

    def submit(self, session: LiveSession, frame: DrivingFrame, t: float) -> "Future[Rendered]":
        """Render `frame` of `session` (captured at time t, seconds) in the next batch."""
        answer: Future[Rendered] = Future()
        self._queue.put(_Pending(session, frame, t, answer))
        return answer

    def stop(self) -> None:
        """Render what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """The batch that starts with `first`, and whether a stop was asked meanwhile."""
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            with self._lock:
                if len(batch) >= self._open:
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = self._gather(first)
            batch = [p for p in batch if p.answer.set_running_or_notify_cancel()]  # callers gone: skip
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = self._render(
                    self.engine, [p.session for p in batch], [p.frame for p in batch], [p.t for p in batch]
                )
            except Exception as exc:  # the whole batch failed: every caller gets the error
                results = [exc] * len(batch)
            ended = time.monotonic()
            for pending, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    pending.answer.set_exception(result)
                else:
                    pending.answer.set_result(Rendered(result, len(batch), started, ended))
