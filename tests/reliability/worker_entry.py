"""Test-only worker process: `python -m tests.reliability.worker_entry`.

It runs what `liveportrait worker` runs (logging set up, then the RQ work loop) with the settings
of the ``LIVEPORTRAIT_*`` environment, but with an engine built by a factory instead of the GPU
model. Two variables are read by this script alone, never by production code:

- ``LIVEPORTRAIT_TEST_ENGINE=module:factory`` names a callable returning a `worker.runner.WorkerEngine`
  (default `tests.reliability.worker_entry:fake_engine`);
- ``LIVEPORTRAIT_TEST_FRAME_DELAY`` is the seconds per frame of that default engine, the
  PyAV-writing `FakeAnimator` of tests/worker/doubles.py.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from service.logs import configure_logging
from service.settings import Settings
from tests.worker import doubles
from worker.runner import WorkerEngine
from worker.worker import build_worker

ENGINE_VARIABLE = "LIVEPORTRAIT_TEST_ENGINE"
FRAME_DELAY_VARIABLE = "LIVEPORTRAIT_TEST_FRAME_DELAY"
DEFAULT_ENGINE = "tests.reliability.worker_entry:fake_engine"


def fake_engine() -> WorkerEngine:
    """FakeAnimator taking LIVEPORTRAIT_TEST_FRAME_DELAY seconds per frame."""
    delay = float(os.environ.get(FRAME_DELAY_VARIABLE, "0"))
    return doubles.fake_engine(doubles.FakeAnimator(frame_delay=delay))


def engine_factory(spec: str) -> Callable[[], WorkerEngine]:
    """Resolve ``module:callable``."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def main() -> None:
    """Run a worker until SIGTERM/SIGINT, like `worker.worker.main` but with the test engine."""
    settings = Settings()
    configure_logging(settings)
    engine = engine_factory(os.environ.get(ENGINE_VARIABLE, DEFAULT_ENGINE))()
    build_worker(settings, engine, idle_poll_s=1).work(logging_level=settings.log_level.upper())


if __name__ == "__main__":
    main()
