"""Test-only live worker process: `python -m tests.live.worker_entry NAME`.

What `liveportrait worker` runs for live sessions (worker.live.LiveServer), with the settings of the
``LIVEPORTRAIT_*`` environment, on bench.standin's STAND-IN MODEL, until the process is killed: the
test of a worker that dies mid-session kills it.
"""

from __future__ import annotations

import sys
import threading

from bench.standin import stand_in_engine
from service.logs import configure_logging
from service.settings import Settings
from worker.live import LiveServer


def main() -> None:
    settings = Settings()
    configure_logging(settings)
    LiveServer(settings, stand_in_engine(), name=sys.argv[1]).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
