"""A live session on the real networks (synthetic weights, CPU): frames out for frames in.

A frame costs W + G (~1.25 TFLOP) on this CPU, so one frame goes through each of two sessions: the 512
crop, then the portrait (512 x 512) with the face pasted back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engines.engine import Engine
from engines.source_cache import SourceCache
from engines.weights import write_synthetic_bundle
from service.settings import Settings
from tests.engines.factory import cpu_engine
from tests.live.conftest import LiveStack, decoded, driving_frames, next_frame, wait_for_slots
from worker.live import LiveServer


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return cpu_engine(write_synthetic_bundle(tmp_path_factory.mktemp("weights"), 0))


@pytest.mark.slow
def test_frames_out_for_frames_in_on_the_real_model(
    live_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    live_worker: Callable[..., LiveServer],
    real_engine: Engine,
    tmp_path: Path,
) -> None:
    settings = live_settings()
    cache = SourceCache(64 * 2**20)
    stack = LiveStack(
        settings, gateway_server(settings), live_worker(settings, real_engine, cache=cache), tmp_path
    )
    source = stack.source()
    frame = driving_frames(1)[0]
    for output_kind in ("crop", "pasteback"):
        with stack.connect(source, output_kind=output_kind) as live:
            live.send_frame(frame)
            answer = next_frame(live, timeout=600)
        assert answer.stats.seq == 0 and decoded(answer.jpeg).shape == (512, 512, 3)
    assert (cache.misses, cache.hits) == (1, 1)  # the second session found the source prepared
    wait_for_slots(stack, 0)
