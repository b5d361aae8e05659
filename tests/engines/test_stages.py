"""engines.stages: the producer thread ahead of the inference loop and the consumer behind it."""

import threading

import pytest

from engines.stages import Ahead, Behind
from tests.waiting import wait_until


def test_ahead_yields_every_item_in_order_from_another_thread():
    threads = set()

    def produce():
        for i in range(20):
            threads.add(threading.current_thread().name)
            yield i

    with Ahead(produce(), depth=3, name="producer") as items:
        assert list(items) == list(range(20))
        assert next(items, "done") == "done"
    assert threads == {"producer"}


def test_ahead_stays_at_most_depth_items_ahead():
    produced = []

    def produce():
        for i in range(100):
            produced.append(i)
            yield i

    with Ahead(produce(), depth=2) as items:
        assert next(items) == 0
        # once `depth` items are queued the producer can only hold one more, waiting for room
        wait_until(items._queue.full, 10, "the producer to fill its queue")
        wait_until(lambda: len(produced) == 1 + 2 + 1, 10, "the producer to take the next item in hand")
        assert items._queue.qsize() == 2
        # nothing is consumed, so nothing more can be produced: the producer stays blocked
        assert items._thread.is_alive() and len(produced) == 4
        assert next(items) == 1
        wait_until(lambda: len(produced) == 5, 10, "the producer to move on by exactly one item")


def test_ahead_raises_the_producers_error_in_the_consumer():
    def produce():
        yield 1
        raise ValueError("bad frame")

    with Ahead(produce()) as items:
        assert next(items) == 1
        with pytest.raises(ValueError, match="bad frame"):
            next(items)


def test_ahead_close_stops_an_endless_producer():
    def produce():
        i = 0
        while True:
            yield i
            i += 1

    items = Ahead(produce(), depth=2)
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    items.close()
    assert not items._thread.is_alive()


def test_behind_consumes_in_order_in_another_thread_and_finish_waits():
    seen, threads = [], set()
    last_in_hand, release = threading.Event(), threading.Event()

    def consume(item):
        if item == 9:  # the last item stays in the consumer's hand until the test releases it
            last_in_hand.set()
            assert release.wait(10)
        threads.add(threading.current_thread().name)
        seen.append(item)

    behind = Behind(consume, depth=2, name="consumer")
    for i in range(10):
        behind.put(i)
    assert last_in_hand.wait(10)
    assert seen == list(range(9)), "put returns before the consumer is done"
    release.set()
    behind.finish()
    assert seen == list(range(10)), "finish returns once the item in hand is consumed"
    assert threads == {"consumer"}


def test_behind_raises_the_consumers_error_on_put_and_on_finish():
    def consume(item):
        if item == 2:
            raise OSError("disk full")

    behind = Behind(consume, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):
            behind.put(i)
    with pytest.raises(OSError, match="disk full"):
        behind.finish()


def test_behind_abort_drops_what_is_queued():
    started, release, seen = threading.Event(), threading.Event(), []

    def consume(item):
        started.set()
        release.wait(5)
        seen.append(item)

    behind = Behind(consume, depth=3)
    for i in range(4):
        behind.put(i)
    assert started.wait(5)
    release.set()
    behind.abort()
    assert seen == [0]  # the item in hand finishes; the queued ones are dropped
