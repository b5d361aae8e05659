"""The cost per frame of animating 1, 2 and 4 faces of one picture, in the same run.

    .venv/bin/python -m bench.bench_faces                        # CPU: jobs of 1 and 4 frames, 2 rounds
    .venv/bin/python -m bench.bench_faces --device cuda --frames 64 --repeats 5

The source is the bundled portrait and its mirror image in turn, four tiles side by side
(engines.demo.group_portrait: four real faces, which the Haar cascade finds). The jobs animate
faces [0] (the baseline), [0, 1] and all four of this one picture with the same driving video, so
the frame, its decode, paste-back area and encode are the same size and only the faces differ. A job
is Animator.animate: detection, crop, M and F of each face (once a job), then per batch of frames
the motion transfer of each face, W+G of every face of the batch (engines.faces), paste-back of each
face in turn and H.264 encode. Each face count runs a job of 1 frame and one of `--frames`, in turns
(ABBA) after a warm-up: the difference over the extra frames is the cost per frame, the rest of the
short job the cost per job. N faces should cost about N times one face per frame.
"""

import functools
import tempfile
from pathlib import Path

from rich.table import Table

from common.engine_config import EngineConfig
from common.options import AnimationOptions
from engines.demo import group_portrait, head_motion_frames, portrait
from engines.engine import load_engine
from engines.media import write_image, write_test_video
from engines.pipeline import Animator
from engines.request import AnimateRequest

from ._common import bench_parser, console, interleaved, median, print_machine, start_bench, weights_dir

FACES: dict[str, tuple[int, ...]] = {"1 face": (0,), "2 faces": (0, 1), "4 faces": (0, 1, 2, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--frames", type=int, default=4, help="driving frames of the long job (default 4)")
    parser.add_argument("--tile", type=int, default=256, help="side of each face's tile in px (default 256)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (default 2)")
    parser.add_argument("--frame-batch", type=int, help="frames per batch (default: the device's)")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    device, precision = start_bench(args)
    config = EngineConfig(
        weights_dir=weights_dir(args.weights),
        device=args.device,
        precision=precision,
        detector="haar-box",
        frame_batch=args.frame_batch,
    )
    animator = Animator(load_engine(config))
    lengths = (1, args.frames)
    with tempfile.TemporaryDirectory(prefix="lp-bench-faces-") as tmp:
        folder = Path(tmp)
        source = folder / "group.png"
        write_image(source, group_portrait(4, args.tile))
        for frames in lengths:
            write_test_video(
                folder / f"driving-{frames}.mp4",
                head_motion_frames(portrait(), frames),
                fps=25.0,
                with_audio=False,
            )

        def job(faces: tuple[int, ...], frames: int) -> None:
            options = AnimationOptions(faces=faces, audio="none")
            request = AnimateRequest(source, folder / f"driving-{frames}.mp4", folder / "out.mp4", options)
            assert animator.animate(request).frames == frames

        jobs = {(name, n): functools.partial(job, faces, n) for name, faces in FACES.items() for n in lengths}
        wall, _ = interleaved({f"{name}/{n}": fn for (name, n), fn in jobs.items()}, args.repeats, 1, device)

    extra = args.frames - 1
    per_frame = {
        name: median(
            [
                (long - short) / extra
                for short, long in zip(wall[f"{name}/1"], wall[f"{name}/{args.frames}"], strict=True)
            ]
        )
        for name in FACES
    }
    engine = animator.engine
    title = (
        f"jobs of 1 and {args.frames} frames, a {4 * args.tile}x{args.tile} picture, {precision}, {device}, "
        f"frame batch {engine.frame_batch}: median of {args.repeats} rounds"
    )
    table = Table(title=title)
    for column in ("faces", "s/job (setup)", "s/frame", "vs 1 face", "per face vs 1 face"):
        table.add_column(column, justify="left" if column == "faces" else "right")
    for name, faces in FACES.items():
        setup = median(wall[f"{name}/1"]) - per_frame[name]
        ratio = per_frame[name] / per_frame["1 face"]
        table.add_row(
            name, f"{setup:.2f}", f"{per_frame[name]:.3f}", f"{ratio:.2f}x", f"{ratio / len(faces):.2f}x"
        )
    console.print(table)
    print_machine(device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
