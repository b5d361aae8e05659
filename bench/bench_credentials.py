"""What signing the C2PA content credentials costs a job, against encoding its video, in one run.

    .venv/bin/python -m bench.bench_credentials                  # 1,000 frames of 512x512, 25 fps
    .venv/bin/python -m bench.bench_credentials --frames 200

The baseline is the job's H.264 encode (engines.media.VideoWriter at the job defaults: crf 18,
preset medium, with an AAC track) of `--frames` frames of the demo's head motion (engines.demo).
Then, on that file: `load_signer` (once per worker or CLI start: development credentials, checks,
a test signature) and `ContentSigner.sign` (per job: hash the two inputs, build and sign the
manifest, rewrite the file, the C2PA library's verify-after-sign), `--repeats` times each on a
fresh copy. The driving input is a second encode of the same frames (a driving video as long as
the result), the source the 512x512 portrait as PNG.
"""

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.table import Table

from common.content_credentials import CredentialsConfig
from engines.demo import head_motion_frames, portrait
from engines.media import VideoWriter, write_image
from engines.media.credentials import load_signer

from ._common import console, median, print_machine


def encode(path: Path, frames: int, size: int) -> None:
    """The job's encode of `frames` head-motion frames (crf 18, preset medium, a 440 Hz AAC track)."""
    with VideoWriter(path, 25.0, size, size, crf=18, tone_hz=440.0) as writer:
        for rgb in head_motion_frames(portrait(), frames, size=size):
            writer.write(rgb)


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="timed signatures (and signer loads)")
    args = parser.parse_args(argv)

    print_machine(torch.device("cpu"))
    work = Path(tempfile.mkdtemp(prefix="lp-bench-credentials-"))
    try:
        source = work / "source.png"
        write_image(source, portrait())
        frames_only = work / "frames.mp4"
        encode_s = timed(lambda: encode(frames_only, args.frames, args.size), 1)[0]
        driving = work / "driving.mp4"
        shutil.copy(frames_only, driving)
        dev_dir = work / "dev"
        load_signer(CredentialsConfig(dev_dir=dev_dir))  # makes the development credentials once
        load_s = timed(lambda: load_signer(CredentialsConfig(dev_dir=dev_dir)), args.repeats)
        signer = load_signer(CredentialsConfig(dev_dir=dev_dir))
        copies = iter(range(args.repeats))

        def sign() -> None:
            out = work / f"output-{next(copies)}.mp4"
            shutil.copy(frames_only, out)
            signer.sign(out, job_id="0" * 32, inputs={"source": source, "driving": driving})

        out_mb = frames_only.stat().st_size / 1e6
        copy_s = timed(lambda: shutil.copy(frames_only, work / "copy.mp4"), args.repeats)
        sign_s = [s - median(copy_s) for s in timed(sign, args.repeats)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    video = f"{args.frames} frames of {args.size}x{args.size}, {out_mb:.1f} MB"
    table = Table(title=f"{video}; median of {args.repeats} signatures")
    for column in ("step", "seconds", "vs encode"):
        table.add_column(column, justify="right" if column != "step" else "left")
    table.add_row("encode (baseline, once)", f"{encode_s:.2f}", "1")
    table.add_row("load_signer (per start)", f"{median(load_s):.3f}", f"{median(load_s) / encode_s:.4f}")
    table.add_row("sign (per job)", f"{median(sign_s):.3f}", f"{median(sign_s) / encode_s:.4f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
