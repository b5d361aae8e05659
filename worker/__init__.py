"""The RQ worker: `main(settings)` runs one (what `liveportrait worker` calls)."""

from worker.worker import AnimationWorker, build_worker, load_engine, main

__all__ = ["AnimationWorker", "build_worker", "load_engine", "main"]
