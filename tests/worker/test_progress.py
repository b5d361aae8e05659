"""worker.progress: reports of an attempt's phases, the share done weighted by the phases' costs, the ETA,
the rate limit and what the costs learn from a finished attempt (a hand-driven clock)."""

from __future__ import annotations

import pytest

from common.progress import Phase, ProgressEvent
from service.queue import PhaseProgress
from worker.progress import AttemptProgress, PhaseCosts

COSTS: dict[Phase, float] = {"preparing": 1.0, "extracting_motion": 0.1, "rendering": 1.0, "finalizing": 1.0}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker(
    costs: PhaseCosts, clock: Clock
) -> tuple[AttemptProgress, list[tuple[int, int | None, PhaseProgress]]]:
    reports: list[tuple[int, int | None, PhaseProgress]] = []
    progress = AttemptProgress(costs, lambda *report: reports.append(report), clock=clock)
    return progress, reports


def test_the_share_done_weighs_each_phase_by_its_cost_and_the_eta_follows_the_pace() -> None:
    clock = Clock()
    progress, reports = tracker(PhaseCosts(COSTS), clock)
    progress(ProgressEvent("preparing"))
    assert reports[-1][2] == PhaseProgress("preparing", 0, None, 0.0, None), (
        "frames unknown: nothing to weigh"
    )
    clock.now += 2.0
    progress(ProgressEvent("extracting_motion", 0, None))
    clock.now += 1.0
    progress(ProgressEvent("extracting_motion", 10, 10))  # 10 frames: motion 1 s, rendering 10 s
    frames_done, frames_total, state = reports[-1]
    assert (frames_done, frames_total) == (0, 10)
    assert state.fraction == pytest.approx(2.0 / 13.0)  # preparing 1 + motion 1 of 1 + 1 + 10 + 1
    assert state.eta_s == pytest.approx(11.0 * 3.0 / 2.0)  # what is left, at this attempt's pace
    progress(ProgressEvent("rendering", 0, 10))
    clock.now += 5.0
    progress(ProgressEvent("rendering", 5, 10))
    assert reports[-1][:2] == (5, 10) and reports[-1][2].fraction == pytest.approx(7.0 / 13.0)
    progress(ProgressEvent("finalizing"))
    assert reports[-1][:2] == (5, 10) and reports[-1][2].phase == "finalizing"
    assert reports[-1][2].fraction == pytest.approx(12.0 / 13.0)


def test_reports_are_rate_limited_but_phase_changes_and_last_frames_go_at_once() -> None:
    clock = Clock()
    progress, reports = tracker(PhaseCosts(COSTS), clock)
    progress(ProgressEvent("rendering", 0, 4))
    progress(ProgressEvent("rendering", 1, 4))
    progress(ProgressEvent("rendering", 2, 4))
    assert [r[0] for r in reports] == [0], "held back within min_interval_s"
    assert progress.flush() and reports[-1][0] == 2 and not progress.flush()
    progress(ProgressEvent("rendering", 3, 4))
    progress(ProgressEvent("rendering", 4, 4))
    clock.now += 1.0
    progress(ProgressEvent("finalizing"))
    assert [r[0] for r in reports] == [0, 2, 4, 4]


def test_costs_learn_the_measured_seconds_per_frame_and_per_job() -> None:
    clock = Clock()
    costs = PhaseCosts(COSTS)
    progress, _ = tracker(costs, clock)
    progress(ProgressEvent("preparing"))
    clock.now += 3.0
    progress(ProgressEvent("extracting_motion", 4, 4))
    clock.now += 0.4
    progress(ProgressEvent("rendering", 0, 4))
    clock.now += 12.0
    progress(ProgressEvent("finalizing"))
    clock.now += 1.0
    progress.finish()
    assert costs.seconds == pytest.approx(
        {"preparing": 2.0, "extracting_motion": 0.1, "rendering": 2.0, "finalizing": 1.0}
    )
