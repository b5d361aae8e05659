"""An attempt's progress as the service shows it: its phase, its frames, the share of the whole job done
with each phase weighted by what it costs, and the seconds left.

Phase costs are seconds per job (preparing, finalizing) or per frame (extracting_motion, rendering),
learned from this worker's finished attempts (an even mix of the last measurement and the ones
before), starting from `DEFAULT_COSTS`. They set how much of the job each phase is; the ETA then
scales the cost of what is left by how fast this attempt went so far against the same costs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from common.progress import EXTRACTING_MOTION, PHASES, RENDERING, Phase, ProgressEvent
from service.queue import PhaseProgress

DEFAULT_COSTS: dict[Phase, float] = {
    "preparing": 1.0,
    "extracting_motion": 0.08,
    "rendering": 3.2,
    "finalizing": 1.0,
}
"""Seconds per job (preparing, finalizing) or per frame (the other two) before any attempt is measured:
a 2-core CPU's (docs/benchmarks.md: M ~80 ms, M + W + G ~3.2 s a frame)."""
PER_FRAME: frozenset[Phase] = frozenset({EXTRACTING_MOTION, RENDERING})

Report = Callable[[int, int | None, PhaseProgress], None]
"""Where the progress goes: (frames rendered, frames the attempt renders, the phase and estimate)."""


class PhaseCosts:
    """What each phase costs, in seconds per job or per frame, learned from measured attempts."""

    def __init__(self, seconds: Mapping[Phase, float] = DEFAULT_COSTS) -> None:
        self.seconds: dict[Phase, float] = dict(seconds)

    def of(self, phase: Phase, frames: int | None) -> float | None:
        """Seconds `phase` takes for `frames` frames (None while a per-frame phase's count is unknown)."""
        if phase not in PER_FRAME:
            return self.seconds[phase]
        return None if frames is None else self.seconds[phase] * frames

    def learn(self, spent: Mapping[Phase, float], frames: Mapping[Phase, int]) -> None:
        """Take in the seconds each phase of a finished attempt took (its frames, for per-frame ones)."""
        for phase, seconds in spent.items():
            count = frames.get(phase, 0) if phase in PER_FRAME else 1
            if count > 0:
                self.seconds[phase] = 0.5 * self.seconds[phase] + 0.5 * seconds / count


class AttemptProgress:
    """Turns an attempt's progress events into reports: at once on a new phase or a phase's last frame,
    else at most every `min_interval_s`; `flush` sends what that held back (from another thread)."""

    def __init__(
        self,
        costs: PhaseCosts,
        report: Report,
        *,
        min_interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.costs = costs
        self.report = report
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.started = clock()
        self.phase: Phase | None = None
        self.done = 0
        self.rendered = 0
        self.total: int | None = None
        self.frames: dict[Phase, int | None] = {}
        self.spent: dict[Phase, float] = {}
        self._phase_started = self.started
        self._reported_at: float | None = None
        self._held = False
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        """Take in one event of the engine (or of the worker: preparing, finalizing)."""
        with self._lock:
            self._take(event)

    def flush(self) -> bool:
        """Report the latest state if the rate limit held it back; whether it did."""
        with self._lock:
            if self._held:
                self._send(self.clock())
                return True
            return False

    def _send(self, now: float) -> None:
        self._reported_at, self._held = now, False
        self.report(self.rendered, self.frames.get(RENDERING), self.estimate(now))

    def _take(self, event: ProgressEvent) -> None:
        now = self.clock()
        new_phase = event.phase != self.phase
        if new_phase:
            if self.phase is not None:
                self.spent[self.phase] = now - self._phase_started
            self.phase, self._phase_started = event.phase, now
        self.done, self.total = event.done, event.total
        if event.phase == RENDERING:
            self.rendered = event.done
        if event.phase in PER_FRAME and event.total is not None:
            self.frames[event.phase] = max(event.total, event.done)
            # the first count of the driving frames is how many the attempt renders, until rendering says
            self.frames.setdefault(RENDERING, event.total)
        due = self._reported_at is None or now - self._reported_at >= self.min_interval_s
        if new_phase or due or (event.total is not None and event.done >= event.total):
            self._send(now)
        else:
            self._held = True

    def estimate(self, now: float) -> PhaseProgress:
        """The current phase and frames, the share of the attempt done and the seconds left."""
        assert self.phase is not None
        costs = [self.costs.of(phase, self.frames.get(phase)) for phase in PHASES]
        fraction, eta = 0.0, None
        if all(cost is not None for cost in costs):
            known = [cost or 0.0 for cost in costs]
            current = PHASES.index(self.phase)
            share = self.done / self.total if self.total else 0.0
            done = sum(known[:current]) + known[current] * min(1.0, share)
            total = sum(known)
            fraction = done / total if total > 0 else 0.0
            if done > 0:
                eta = (total - done) * (now - self.started) / done
        return PhaseProgress(self.phase, self.done, self.total, min(1.0, fraction), eta)

    def finish(self) -> None:
        """The attempt succeeded: its phases' measured times go into the costs."""
        if self.phase is not None:
            self.spent[self.phase] = self.clock() - self._phase_started
        counted = {phase: count for phase, count in self.frames.items() if count is not None}
        self.costs.learn(self.spent, counted)
