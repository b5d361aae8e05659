"""The cost per frame of animating 1, 2 and 4 faces of one picture, in the same run.

    .venv/bin/python -m bench.bench_faces                        # CPU: 2 frames, 1 warm-up + 2 jobs each
    .venv/bin/python -m bench.bench_faces --device cuda --frames 64 --repeats 5

The source is the bundled portrait and its mirror image in turn, four tiles side by side
(engines.demo.group_portrait: four real faces, which the Haar cascade finds). The three jobs animate
faces [0] (the baseline), [0, 1] and all four of this one picture with the same driving video, so
the frame, its decode, paste-back area and encode are the same size and only the faces differ. A job
is Animator.animate: detection, crop, M and F of each face, then per batch of frames the motion
transfer of each face, W+G of every face of the batch (engines.faces), paste-back of each face in
turn and H.264 encode. One warm-up job each, then the jobs in turns (ABBA). The table gives the
median seconds per frame and their ratio to one face; N faces should cost about N times one.
"""

import argparse
import functools
import tempfile
from pathlib import Path

import torch
from rich.table import Table

from common.engine_config import EngineConfig
from common.options import AnimationOptions
from engines.demo import group_portrait, head_motion_frames, portrait
from engines.engine import load_engine
from engines.media import write_image, write_test_video
from engines.pipeline import Animator
from engines.request import AnimateRequest

from ._common import console, interleaved, median, print_machine, weights_dir

FACES: dict[str, tuple[int, ...]] = {"1 face": (0,), "2 faces": (0, 1), "4 faces": (0, 1, 2, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default: fp32 CPU, fp16 CUDA")
    parser.add_argument("--frames", type=int, default=2, help="driving frames per job (default 2)")
    parser.add_argument("--tile", type=int, default=256, help="side of each face's tile in px (default 256)")
    parser.add_argument("--repeats", type=int, default=2, help="timed jobs per face count (default 2)")
    parser.add_argument("--frame-batch", type=int, help="frames per batch (default: the device's)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--weights", help="weights directory (default: a synthetic bundle)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine(device)
    config = EngineConfig(
        weights_dir=weights_dir(args.weights),
        device=args.device,
        precision=precision,
        detector="haar-box",
        frame_batch=args.frame_batch,
    )
    animator = Animator(load_engine(config))
    with tempfile.TemporaryDirectory(prefix="lp-bench-faces-") as tmp:
        folder = Path(tmp)
        source = folder / "group.png"
        write_image(source, group_portrait(4, args.tile))
        driving = folder / "driving.mp4"
        write_test_video(driving, head_motion_frames(portrait(), args.frames), fps=25.0, with_audio=False)

        def job(name: str) -> None:
            options = AnimationOptions(faces=FACES[name], audio="none")
            result = animator.animate(AnimateRequest(source, driving, folder / "out.mp4", options))
            assert result.frames == args.frames

        wall, _ = interleaved(
            {name: functools.partial(job, name) for name in FACES}, args.repeats, warmup=1, device=device
        )

    engine = animator.engine
    title = (
        f"{args.frames} frames of a {4 * args.tile}x{args.tile} picture, {precision}, {device}, "
        f"frame batch {engine.frame_batch}: {args.repeats} jobs each"
    )
    table = Table(title=title)
    for column in ("faces", "median s/job", "s/frame", "vs 1 face", "per face vs 1 face"):
        table.add_column(column, justify="left" if column == "faces" else "right")
    one = median(wall["1 face"]) / args.frames
    for name, faces in FACES.items():
        per_frame = median(wall[name]) / args.frames
        ratio = per_frame / one
        table.add_row(
            name,
            f"{median(wall[name]):.2f}",
            f"{per_frame:.3f}",
            f"{ratio:.2f}x",
            f"{ratio / len(faces):.2f}x",
        )
    console.print(table)
    print_machine(device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
