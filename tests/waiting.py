"""Waiting in tests: poll a condition until it holds, with a deadline.

Tests wait for what they need (a job's status, a server answering, a log line), never for a fixed
time; the deadline only bounds how long a broken system is waited for before the test fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], timeout: float, what: str, poll_s: float = 0.02) -> T:
    """Call `condition` until it returns something truthy, and return that (so never None).

    Fails with an AssertionError naming `what` (and the last value seen) after `timeout` seconds.
    `condition` may raise to fail at once (say, a process it waits for has exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(poll_s)  # the polling interval, not a wait for something to happen
