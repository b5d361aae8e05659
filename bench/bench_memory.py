"""Peak RSS of a whole job against the driving video's length, and of W+G against the batch size.

    .venv/bin/python -m bench.bench_memory                      # 100 vs 2000 frames, W+G at batch 1 2 4 8
    .venv/bin/python -m bench.bench_memory --frames 100 500 --render-batches

Every measurement runs in a fresh child process and reads the child's own peak resident set size
(VmHWM in /proc/self/status) at its end; for a job, VmHWM is restarted after the model is loaded, so
the peak is the job's own.

Part 1, the job: the real Animator (optimised fp32) runs decode -> crop -> M on every driving frame
-> motion transfer -> render -> paste-back -> H.264 encode, but its render step (W+G, ~1.25 TFLOP a
frame: hours for 2,000 frames on a CPU) is REPLACED by a cheap stand-in that returns a batch of the
same shape, (B, 3, 512, 512) float32. Everything else is real. W+G's own memory depends on the batch
size only, not on the number of frames; part 2 measures it.

The job runs once with glibc's malloc and once with jemalloc (LD_PRELOAD, where the machine has
it). glibc keeps freed heap in its per-thread arenas (FFmpeg's decoder threads, the pipeline's
stage threads); the pipeline calls malloc_trim after every batch (engines/heap.py), without which
a long job's peak grew with its length under glibc.

Part 2, W+G: one real render at batch B, eager and optimised, each in its own process.
"""

import argparse
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from rich.table import Table

from ._common import console, print_machine, weights_dir

STAND_IN = "the render step (W+G) is a stand-in of the same output shape; all else is the real job"


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    return _status_mib("VmHWM")


def rss_mib() -> float:
    """This process's resident set size now (VmRSS), MiB."""
    return _status_mib("VmRSS")


def reset_peak_rss() -> None:
    """Restart VmHWM from the current RSS (Linux: "5" to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def stand_in_render(f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """(B, 3, 512, 512) float32 in [0, 1], a flat grey that follows x_d: render's output shape."""
    level = torch.sigmoid(x_d.float().mean(dim=(1, 2)))
    return level.view(-1, 1, 1, 1).expand(-1, 3, 512, 512).contiguous()


def child_job(weights: Path, source: Path, driving: Path, out: Path, frame_batch: int) -> dict:
    from common.engine_config import EngineConfig
    from common.options import AnimationOptions
    from engines.engine import load_engine
    from engines.pipeline import Animator
    from engines.request import AnimateRequest

    engine = load_engine(EngineConfig(weights_dir=weights, device="cpu", frame_batch=frame_batch))
    engine.model.render = stand_in_render  # type: ignore[method-assign]
    animator = Animator(engine)
    loaded = peak_rss_mib()
    reset_peak_rss()  # the job's own peak, not the model load's (optimize_for_inference's float64)
    start = rss_mib()
    result = animator.animate(AnimateRequest(source, driving, out, AnimationOptions()))
    return {
        "frames": result.frames,
        "loaded_mib": loaded,
        "start_mib": start,
        "peak_mib": peak_rss_mib(),
        "end_mib": rss_mib(),
    }


def child_render(weights: Path, batch: int, optimised: bool) -> dict:
    from common.engine_config import EngineConfig
    from engines.engine import load_engine

    config = EngineConfig(weights_dir=weights, device="cpu", optimize=optimised, detector="haar-box")
    model = load_engine(config).model
    torch.manual_seed(0)
    f_s = torch.randn(1, 32, 16, 64, 64)
    x_s = torch.rand(1, 21, 3) * 0.6 - 0.3
    x_d = x_s + 0.02 * torch.randn(batch, 21, 3)
    loaded = peak_rss_mib()
    with torch.inference_mode():
        model.render(f_s, x_s, x_d)
    return {"loaded_mib": loaded, "peak_mib": peak_rss_mib()}


def jemalloc() -> str | None:
    """The jemalloc shared library's name, if this machine has one (for LD_PRELOAD)."""
    return ctypes.util.find_library("jemalloc")


def run_child(*args: str, preload: str | None = None) -> dict:
    """Run this module with `args` in a fresh interpreter (with `preload` in LD_PRELOAD); its last
    stdout line is JSON."""
    env = dict(os.environ, **({"LD_PRELOAD": preload} if preload else {}))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_memory", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def job_table(weights: Path, frames: list[int], frame_batch: int, allocators: dict[str, str | None]) -> None:
    """Part 1: a whole job per (allocator, driving length), each in a child process."""
    from engines.demo import head_motion_frames, portrait
    from engines.media import write_image, write_test_video

    table = Table(title=f"peak RSS of a whole job (child process, VmHWM), MiB: {STAND_IN}")
    columns = ("allocator", "driving frames", "model load peak", "RSS at job start", "job peak", "RSS at end")
    for column in (*columns, "vs first"):
        table.add_column(column, justify="right")
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="lp-bench-memory-") as tmp:
        tmp_dir = Path(tmp)
        source = tmp_dir / "source.png"
        write_image(source, portrait())
        drivings = {}
        for n in frames:
            drivings[n] = tmp_dir / f"driving{n}.mp4"
            write_test_video(
                drivings[n], head_motion_frames(portrait(), n, size=512), fps=25.0, with_audio=True
            )
        for allocator, preload in allocators.items():
            peaks = []
            for n in frames:
                console.print(f"  {allocator}: job with {n} driving frames ({STAND_IN}) ...")
                args = ("job", str(weights), str(source), str(drivings[n]), str(tmp_dir / "out.mp4"))
                r = run_child("--child", *args, str(frame_batch), preload=preload)
                assert r["frames"] == n
                peaks.append(r["peak_mib"])
                cells = (r["loaded_mib"], r["start_mib"], r["peak_mib"], r["end_mib"])
                table.add_row(allocator, str(n), *(f"{c:.0f}" for c in cells), f"{peaks[-1] / peaks[0]:.3f}")
            growth = max(peaks) / min(peaks) - 1
            flat = "flat within 10%" if growth <= 0.10 else "NOT flat within 10%"
            verdicts.append(
                f"{allocator}: peak RSS spread {100 * growth:.1f}% across {frames} frames: {flat}"
            )
    console.print(table)
    for verdict in verdicts:
        console.print(verdict)


def render_table(weights: Path, batches: list[int]) -> None:
    """Part 2: one real W+G render per (batch, model), each in a child process."""
    table = Table(title="peak RSS of one real W+G render (child process per cell), MiB")
    for column in ("batch", "eager: loaded", "eager: peak", "optimised: loaded", "optimised: peak"):
        table.add_column(column, justify="right")
    for b in batches:
        cells = []
        for kind in ("eager", "optimised"):
            console.print(f"  W+G at batch {b}, {kind} ...")
            r = run_child("--child", "render", str(weights), str(b), kind)
            cells += [f"{r['loaded_mib']:.0f}", f"{r['peak_mib']:.0f}"]
        table.add_row(str(b), *cells)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, nargs="*", default=[100, 2000], help="driving video lengths")
    parser.add_argument("--frame-batch", type=int, default=8)
    parser.add_argument("--render-batches", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument(
        "--allocator", choices=["glibc", "jemalloc", "both"], default="both", help="malloc of the job runs"
    )
    parser.add_argument("--weights", help="weights directory (default: a synthetic bundle)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        kind, *rest = args.child
        if kind == "job":
            weights, source, driving, out = (Path(p) for p in rest[:4])
            result = child_job(weights, source, driving, out, int(rest[4]))
        else:
            result = child_render(Path(rest[0]), int(rest[1]), rest[2] == "optimised")
        print(json.dumps(result))
        return 0

    print_machine(torch.device("cpu"))
    weights = weights_dir(args.weights)
    allocators: dict[str, str | None] = {}
    if args.allocator in ("glibc", "both"):
        allocators["glibc"] = None
    if args.allocator in ("jemalloc", "both"):
        if jemalloc() is None:
            console.print("no jemalloc on this machine: its runs are skipped")
        else:
            allocators["jemalloc"] = jemalloc()
    if args.frames and allocators:
        job_table(weights, args.frames, args.frame_batch, allocators)
    if args.render_batches:
        render_table(weights, args.render_batches)
    print_machine(torch.device("cpu"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
