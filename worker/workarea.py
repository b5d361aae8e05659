"""Each worker process's own folder under the work root, and the removal of dead workers' folders.

A worker holds an exclusive lock on ``worker-{id}.lock`` for as long as it lives and keeps its
attempts' work folders in ``worker-{id}/``. The kernel drops the lock when the process dies, however
it dies, so a starting worker can tell the folders of dead workers (a lock it can take) from those of
live ones sharing the root, and removes them: what a killed attempt downloaded and half-rendered.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

import structlog

log = structlog.get_logger("worker")

_PREFIX = "worker-"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `path`, or None while another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_dead(root: Path) -> list[Path]:
    """Remove the folders of workers that no longer run under `root` (their lock is free); returns them."""
    removed = []
    for folder in sorted(root.glob(f"{_PREFIX}*")):
        if not folder.is_dir():
            continue
        lock = folder.with_name(folder.name + ".lock")
        fd = _try_lock(lock)
        if fd is None:
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
        removed.append(folder)
    return removed


class WorkArea:
    """This process's folder under `root`, locked while it lives; dead workers' folders go on creation."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        removed = remove_dead(root)
        if removed:
            log.info("worker.dead_work_removed", folders=[folder.name for folder in removed])
        name = f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fd = _try_lock(root / f"{name}.lock")
        if fd is None:  # a fresh random name: nobody else can hold it
            raise RuntimeError(f"could not lock the work folder {name}")
        self._lock: int | None = fd
        self.path = root / name
        self.path.mkdir()

    def close(self) -> None:
        """Remove this process's folder and release its lock (a warm shutdown)."""
        if self._lock is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.with_name(self.path.name + ".lock").unlink(missing_ok=True)
        os.close(self._lock)
        self._lock = None
