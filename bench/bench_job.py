"""End-to-end frames/s of a whole job: the plain eager path against the optimised and pipelined ones.

    .venv/bin/python -m bench.bench_job                        # CPU: 4 frames, 1280-px source
    .venv/bin/python -m bench.bench_job --device cuda --precision fp16 --frames 200 --size 512

A job is Animator.animate on an image source and a driving video: decode -> crop -> M -> motion
transfer -> W+G -> paste-back -> H.264 encode. The source is the bundled portrait
(engines/data/astronaut.jpg) resized to --size px; the driving video is its head-motion clip
(engines.demo). Three Animators run the same job:

- eager fp32, sequential: the baseline, the plain modules with every stage in turn on one thread,
  paste-back on the CPU;
- optimised, sequential: engines.acceleration.inference's model at --precision, stages still in turn;
- optimised, pipelined: the same model with decode ahead of and paste-back + encode behind the
  inference loop in their own threads, and on CUDA the paste-back on the GPU.

All are loaded in this process and run their jobs in turns (ABBA...) after one warm-up job each;
frames/s = frames / median wall seconds of a job.
"""

import tempfile
import time
from pathlib import Path

import cv2
from rich.table import Table

from common.engine_config import EngineConfig
from common.options import AnimationOptions
from engines.demo import head_motion_frames, portrait
from engines.engine import load_engine
from engines.media import write_image, write_test_video
from engines.pipeline import Animator
from engines.request import AnimateRequest

from ._common import bench_parser, console, median, print_machine, start_bench, sync, weights_dir


def write_inputs(out_dir: Path, size: int, frames: int) -> tuple[Path, Path]:
    """source.png (the portrait at size x size) and driving.mp4 (frames of head motion, 25 fps)."""
    source = out_dir / "source.png"
    write_image(source, cv2.resize(portrait(), (size, size), interpolation=cv2.INTER_CUBIC))
    driving = out_dir / "driving.mp4"
    write_test_video(driving, head_motion_frames(portrait(), frames, size=512), fps=25.0, with_audio=True)
    return source, driving


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--frames", type=int, help="driving frames (default: 4 CPU, 200 CUDA)")
    parser.add_argument("--size", type=int, default=1280, help="source side in px (default 1280)")
    parser.add_argument("--frame-batch", type=int, help="frames per W+G batch (default: 4 CPU, 16 CUDA)")
    parser.add_argument("--repeats", type=int, default=2, help="timed jobs per Animator")
    parser.add_argument("--cuda-graphs", action="store_true", help="the pipelined path replays W+G graphs")
    args = parser.parse_args(argv)

    device, precision = start_bench(args)
    cuda = device.type == "cuda"
    frames = args.frames or (200 if cuda else 4)
    frame_batch = args.frame_batch or (16 if cuda else 4)

    weights = weights_dir(args.weights)
    graphs = ", CUDA graphs" if args.cuda_graphs else ""
    base = EngineConfig(weights_dir=weights, device=args.device, frame_batch=frame_batch)
    configs = {
        "eager fp32, sequential": base.model_copy(
            update={"optimize": False, "pipelined": False, "compose_on_device": False}
        ),
        f"optimised {precision}, sequential": base.model_copy(
            update={"precision": precision, "pipelined": False, "compose_on_device": False}
        ),
        f"optimised {precision}, pipelined{graphs}": base.model_copy(
            update={"precision": precision, "cuda_graphs": args.cuda_graphs}
        ),
    }
    animators = {name: Animator(load_engine(config)) for name, config in configs.items()}
    options = AnimationOptions(audio="driving")
    with tempfile.TemporaryDirectory(prefix="lp-bench-job-") as tmp:
        tmp_dir = Path(tmp)
        source, driving = write_inputs(tmp_dir, args.size, frames)

        def job(name: str) -> float:
            sync(device)
            start = time.perf_counter()
            result = animators[name].animate(AnimateRequest(source, driving, tmp_dir / "out.mp4", options))
            sync(device)
            assert result.frames == frames and (result.width, result.height) == (args.size, args.size)
            return time.perf_counter() - start

        names = list(animators)
        for name in names:
            console.print(f"  warm-up {name}: {job(name):.1f} s")
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else reversed(names):
                seconds[name].append(job(name))
                console.print(f"  {name}: {seconds[name][-1]:.1f} s")

    title = f"whole job: {frames} frames, {args.size}x{args.size} source, batch {frame_batch}, {device}"
    table = Table(title=title)
    for column in ("path", "median s/job", "frames/s", "s/frame", "ratio (s/frame)"):
        table.add_column(column, justify="left" if column == "path" else "right")
    base_s = median(seconds[names[0]])
    for name in names:
        s = median(seconds[name])
        table.add_row(name, f"{s:.1f}", f"{frames / s:.3f}", f"{s / frames:.2f}", f"{s / base_s:.2f}")
    console.print(table)
    print_machine(device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
