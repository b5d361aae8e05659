"""The CPU per-frame path of two revisions of this repository, side by side in the same run.

    .venv/bin/python -m bench.bench_revisions 352aa85 HEAD          # 4 rounds
    .venv/bin/python -m bench.bench_revisions 352aa85 HEAD --rounds 2 --frames 4 12

Each revision is checked out into a temporary git worktree and runs `liveportrait demo` (the bundled
portrait, a generated driving video, synthetic weights) through the optimised torch fp32 path on the
CPU, sequential (no pipelining), frame batch 1, one torch thread, once with a short and once with a
long driving video. A frame's cost is the difference of the two runs' CPU time (the child process's
user + system seconds) over the extra frames: loading, detection and the source's preparation cancel
out. Both revisions run at the same time, each pinned to a core of its own, and swap cores every
round, so both see the same machine (its load, its memory traffic) in every round. Both write the
same frames (the table says whether they do). Needs 2 cores, git and `taskset`; runs this
environment's Python with each worktree first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import av
import numpy as np
from rich.table import Table

from ._common import console, cpu_model

REPO = Path(__file__).resolve().parents[1]
DEMO_FLAGS = (
    "--device", "cpu", "--backend", "torch", "--optimize", "--precision", "fp32",
    "--no-pipelined", "--frame-batch", "1",
)  # fmt: skip


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A detached checkout of `revision`, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="lp-bench-rev-"))
    add = ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(folder), revision]
    subprocess.run(add, check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], check=False)


def start(tree: Path, frames: int, core: int, output: Path) -> subprocess.Popen[bytes]:
    """`liveportrait demo` of `tree` with `frames` driving frames, pinned to `core`, one torch thread."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = ["taskset", "-c", str(core), sys.executable, "-m", "liveportrait.cli", "demo"]
    command += ["--frames", str(frames), "-o", str(output), *DEMO_FLAGS]
    return subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """The user + system CPU seconds of a finished child (it must have succeeded)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        assert process.stderr is not None
        raise SystemExit(f"the demo failed: {process.stderr.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("baseline", help="the revision measured against (e.g. the commit before a change)")
    parser.add_argument("candidate", help="the revision measured")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--frames", type=int, nargs=2, default=(4, 12), metavar=("SHORT", "LONG"))
    args = parser.parse_args(argv)
    short, long = args.frames
    if long <= short or len(os.sched_getaffinity(0)) < 2:
        parser.error("needs LONG > SHORT frames and 2 cores")
    names = {"baseline": args.baseline, "candidate": args.candidate}
    cpu: dict[str, dict[int, list[float]]] = {name: {short: [], long: []} for name in names}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lp-bench-rev-out-") as out:
        trees = {name: stack.enter_context(worktree(revision)) for name, revision in names.items()}
        outputs = {name: Path(out) / f"{name}.mp4" for name in names}
        for round_ in range(args.rounds):
            cores = {"baseline": round_ % 2, "candidate": 1 - round_ % 2}
            for frames in (short, long):
                running = {name: start(trees[name], frames, cores[name], outputs[name]) for name in names}
                for name, process in running.items():
                    cpu[name][frames].append(cpu_seconds(process))
        same = all(np.array_equal(a, b) for a, b in zip(*map(frames_of, outputs.values()), strict=True))
    per_frame = {
        name: [(b - a) / (long - short) for a, b in zip(runs[short], runs[long], strict=True)]
        for name, runs in cpu.items()
    }
    table = Table(title=f"CPU seconds per frame (jobs of {short} and {long} frames), {args.rounds} rounds")
    for column in ("revision", *(f"round {i + 1}" for i in range(args.rounds)), "mean", "vs baseline"):
        table.add_column(column, justify="left" if column == "revision" else "right")
    base = sum(per_frame["baseline"]) / args.rounds
    for name, values in per_frame.items():
        mean = sum(values) / args.rounds
        table.add_row(
            f"{name} ({names[name]})", *(f"{v:.2f}" for v in values), f"{mean:.3f}", f"{mean / base:.3f}"
        )
    console.print(table)
    ratios = [c / b for b, c in zip(per_frame["baseline"], per_frame["candidate"], strict=True)]
    console.print(f"candidate / baseline by round: {', '.join(f'{r:.3f}' for r in ratios)}")
    console.print(f"the same frames: {same}; machine: {cpu_model()}, load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
