"""A repeated expression edit of one portrait: cold (prepared again) against warm (prepared source cached).

    .venv/bin/python -m bench.bench_edit                       # CPU: 1280-px source, 3 edits each
    .venv/bin/python -m bench.bench_edit --device cuda --precision fp16 --repeats 20

An edit is Editor.still: read the source -> detect, crop, M and F (the prepared source) -> the edit's
keypoints, stitching -> W+G -> paste-back into the source -> PNG. Two Editors share one engine:

- cold: no source cache (SourceCache of 0 bytes): every edit prepares the source again, as an
  editor without a cache must;
- warm: a SourceCache, filled by its warm-up edit: every edit hashes the file, finds the prepared
  source and runs only the keypoints, W+G, paste-back and the PNG.

They edit in turns (ABBA...) with other controls each time, after one warm-up edit each. The table
gives the median seconds per edit and the cache's bytes per entry (the memory bound's unit).
"""

import tempfile
import time
from pathlib import Path

import cv2
from rich.table import Table

from common.engine_config import EngineConfig
from common.expression import ExpressionControls
from common.options import AnimationOptions
from engines.demo import portrait
from engines.editor import Editor
from engines.engine import load_engine
from engines.media import write_image
from engines.source_cache import SourceCache

from ._common import bench_parser, console, median, print_machine, start_bench, sync, weights_dir

MiB = 2**20


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--size", type=int, default=1280, help="source side in px (default 1280)")
    parser.add_argument("--repeats", type=int, help="timed edits per editor (default: 3 CPU, 20 CUDA)")
    parser.add_argument("--cache-mb", type=int, default=256, help="the warm editor's cache bound")
    args = parser.parse_args(argv)

    device, precision = start_bench(args)
    repeats = args.repeats or (20 if device.type == "cuda" else 3)

    engine = load_engine(
        EngineConfig(weights_dir=weights_dir(args.weights), device=args.device, precision=precision)
    )
    warm_cache = SourceCache(args.cache_mb * MiB)
    editors = {
        "cold (no cache)": Editor(engine, SourceCache(0)),
        "warm (cached source)": Editor(engine, warm_cache),
    }
    options = AnimationOptions()
    with tempfile.TemporaryDirectory(prefix="lp-bench-edit-") as tmp:
        tmp_dir = Path(tmp)
        source = tmp_dir / "source.png"
        write_image(source, cv2.resize(portrait(), (args.size, args.size), interpolation=cv2.INTER_CUBIC))
        turn = 0

        def edit(name: str) -> float:
            nonlocal turn
            turn += 1
            controls = ExpressionControls(smile=(turn % 10) / 10, yaw=turn % 20 - 10)
            sync(device)
            start = time.perf_counter()
            result = editors[name].still(source, tmp_dir / "out.png", controls, options)
            sync(device)
            assert (result.width, result.height) == (args.size, args.size)
            return time.perf_counter() - start

        names = list(editors)
        for name in names:
            console.print(f"  warm-up {name}: {edit(name):.2f} s")
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            for name in names if r % 2 == 0 else reversed(names):
                seconds[name].append(edit(name))
                console.print(f"  {name}: {seconds[name][-1]:.2f} s")

    title = f"still edit of a {args.size}x{args.size} portrait, {precision}, {device}: {repeats} edits each"
    table = Table(title=title)
    for column in ("path", "median s/edit", "edits/s", "speed-up"):
        table.add_column(column, justify="left" if column == "path" else "right")
    cold = median(seconds[names[0]])
    for name in names:
        s = median(seconds[name])
        table.add_row(name, f"{s:.3f}", f"{1 / s:.2f}", f"{cold / s:.2f}x")
    console.print(table)
    entry = warm_cache.bytes / max(len(warm_cache), 1)
    console.print(
        f"source cache: {len(warm_cache)} entry of {entry / MiB:.1f} MiB (f_s, motion, frame, crop); "
        f"hits {warm_cache.hits}, misses {warm_cache.misses}; a {args.cache_mb} MiB bound holds "
        f"{int(args.cache_mb * MiB // entry)} such sources"
    )
    print_machine(device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
