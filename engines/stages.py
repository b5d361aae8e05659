"""Overlapping the stages of a job: a producer thread ahead of the inference loop, a consumer behind it.

Decoding (FFmpeg's threads), cropping and face tracking (OpenCV, onnxruntime), paste-back and
encoding all release the GIL for their heavy parts, as torch does for inference. Running the
stages before and after inference in their own threads lets them overlap with it: the inference
loop takes batches that were prepared while the previous batch ran, and hands its results over
without waiting for them to be encoded. Both queues are bounded, so memory stays a few batches.

An exception in a stage's thread is raised in the inference loop's thread, at its next call.
"""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.05


class Ahead(Generic[T]):
    """Iterates `items` in a thread, at most `depth` items ahead of the consumer.

    Use as a context manager around the iteration: leaving it stops the thread and waits for it,
    so whatever `items` reads from (a video file) may be closed afterwards.
    """

    def __init__(self, items: Iterable[T], depth: int = 2, name: str = "ahead") -> None:
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _run(self, items: Iterable[T]) -> None:
        try:
            for item in items:
                if not self._offer(("item", item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._offer(("error", exc))
            return
        self._offer(("end", None))

    def _offer(self, message: tuple[str, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value  # type: ignore[return-value]
        self._ended = True
        if kind == "error":
            raise value  # type: ignore[misc]
        raise StopIteration

    def close(self) -> None:
        """Stop the producer (it finishes the item in hand) and wait for its thread."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Ahead[T]":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Behind(Generic[T]):
    """Runs `consume(item)` in a thread for each item `put`, at most `depth` items queued.

    `put` blocks while the queue is full (back-pressure) and raises the consumer's exception once it
    has failed. `finish()` waits until every item is consumed and raises that exception too;
    `abort()` drops what is queued and waits for the item in hand.
    """

    def __init__(self, consume: Callable[[T], None], depth: int = 2, name: str = "behind") -> None:
        self._consume = consume
        self._queue: queue.Queue[tuple[str, T | None]] = queue.Queue(maxsize=max(1, depth))
        self._aborted = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            kind, item = self._queue.get()
            if kind == "end" or self._aborted.is_set():
                return
            try:
                self._consume(item)  # type: ignore[arg-type]
            except BaseException as exc:  # raised in the producer's thread by put / finish
                self.error = exc
                return

    def _send(self, message: tuple[str, T | None]) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if not self._thread.is_alive():
                return
            try:
                self._queue.put(message, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def put(self, item: T) -> None:
        """Queue `item` for the consumer."""
        self._send(("item", item))

    def finish(self) -> None:
        """Wait until everything put is consumed; raise the consumer's exception if it failed."""
        self._send(("end", None))
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Drop the queued items and wait for the consumer's thread."""
        self._aborted.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive():
            self._queue.put(("end", None))
        self._thread.join()


def ahead(items: Iterable[T], *, enabled: bool, name: str) -> AbstractContextManager[Iterator[T]]:
    """`items` produced in a thread ahead of the caller when `enabled`, else in the caller's thread."""
    return Ahead(items, depth=2, name=name) if enabled else nullcontext(iter(items))


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
