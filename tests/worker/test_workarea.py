"""worker.workarea: each worker's own folder, locked while it lives; a starting worker removes the
folders of dead ones and leaves the live ones'."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from worker.workarea import WorkArea, remove_dead


def test_a_starting_worker_removes_dead_workers_folders_only(tmp_path: Path) -> None:
    live = WorkArea(tmp_path)
    (live.path / "job-a").mkdir()
    # a worker process that made its folder and an attempt's, then died without cleaning up
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from worker.workarea import WorkArea\n"
        "area = WorkArea(Path(sys.argv[1]))\n"
        "(area.path / 'job-b').mkdir()\n"
        "print(area.path)\n"
        "os._exit(0)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    dead = Path(
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    assert (dead / "job-b").is_dir()
    starting = WorkArea(tmp_path)
    assert not dead.exists() and not dead.with_name(dead.name + ".lock").exists()
    assert (live.path / "job-a").is_dir() and starting.path.is_dir(), "live workers keep their folders"
    assert remove_dead(tmp_path) == []
    live.close()
    assert not live.path.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [starting.path.name, starting.path.name + ".lock"]
    )
