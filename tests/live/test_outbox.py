"""The worker's outbox: a client that does not read loses the oldest answers, never buffers more."""

from __future__ import annotations

from common.live import Closing
from worker.live import EVENTS_KEPT, Outbox


def test_the_outbox_keeps_the_newest_frames_and_says_which_it_dropped() -> None:
    outbox = Outbox(frames=2)
    assert outbox.frame(0, b"a", "{}") is None
    assert outbox.frame(1, b"b", "{}") is None
    assert outbox.frame(2, b"c", "{}") == 0
    assert outbox.frame(3, b"d", "{}") == 1
    assert [seq for seq, _, _ in outbox.frames] == [2, 3]


def test_the_outbox_bounds_its_events_and_keeps_the_first_closing() -> None:
    outbox = Outbox(frames=1)
    for i in range(EVENTS_KEPT + 10):
        outbox.event(str(i))
    assert len(outbox.events) == EVENTS_KEPT and outbox.events[-1] == str(EVENTS_KEPT + 9)
    outbox.close(Closing.of("idle_timeout", "idle"))
    outbox.close(Closing.of("normal", "bye"))
    assert outbox.closing is not None and outbox.closing.reason == "idle_timeout"
