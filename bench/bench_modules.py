"""Per-module ms/frame: eager float32 LivePortraitModel against engines.acceleration.inference, in one run.

    .venv/bin/python -m bench.bench_modules                    # CPU, batch 1 and 2 (~5 min on 2 cores)
    .venv/bin/python -m bench.bench_modules --batch 1 4 --repeats 5
    .venv/bin/python -m bench.bench_modules --device cuda --precision fp16 --cuda-graphs

Rows: F (appearance, once per source), M (motion), S (the three MLPs), W, G, and the whole
per-frame path (M + motion transfer + W + G + uint8 frames to host memory). Both models run in
turns (ABBA) in the same process, after warm-up; the table gives medians in ms per frame, the
ratio optimised / eager (of wall time, and of process CPU time: steadier when other processes
share the CPU), and the optimised output's relative L2 error against the eager one. On
CUDA it also reports torch.cuda.max_memory_allocated of the per-frame path per batch size.
"""

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from common.engine_config import EngineConfig
from common.options import AnimationOptions
from engines.demo import head_motion_frames, portrait
from engines.engine import Model, load_engine
from engines.model import image_to_tensor, to_uint8_frames
from engines.motion.keypoints import source_keypoints
from engines.motion.transfer import DrivingMotion, MotionTransfer, SourceMotion

from ._common import (
    bench_parser,
    console,
    interleaved,
    median,
    print_machine,
    rel_l2,
    start_bench,
    sync,
    weights_dir,
)

MODULES = ("F", "M", "S", "W", "G", "frame")


def images(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled portrait (1, 3, 256, 256) and n head-motion driving crops (n, 3, 256, 256)."""
    import cv2

    source = cv2.resize(portrait(), (256, 256), interpolation=cv2.INTER_AREA)
    driving = np.stack(list(head_motion_frames(portrait(), n)))
    to = lambda a: image_to_tensor(torch.from_numpy(a)).to(device)  # noqa: E731
    return to(source[None]), to(driving)


class Case:
    """One model's callables for every module at one batch size (inputs prepared once)."""

    def __init__(self, model: Model, source: torch.Tensor, driving: torch.Tensor, batch: int) -> None:
        self.model = model
        self.source, self.driving = source, driving
        self.f_s = model.extract_appearance(source)
        info = model.extract_motion(source)
        self.src = SourceMotion(info, source_keypoints(info))
        drv_info = model.extract_motion(driving)
        self.transfer = MotionTransfer(model, AnimationOptions(), self.src, drv_info[0:1])
        self.x_d = self.transfer(self.src, DrivingMotion(drv_info))
        self.f_s_b = self.f_s.expand(batch, *self.f_s.shape[1:])
        self.x_s_b = self.src.x_s.expand(batch, -1, -1)
        self.warped = model.warp(self.f_s_b, self.x_s_b, self.x_d)["out"]
        n, gen = driving.shape[0], torch.Generator().manual_seed(0)
        self.mlp_in = {
            "stitching": torch.cat([self.x_s_b.reshape(n, -1), self.x_d.reshape(n, -1)], 1),
            "lip": torch.rand(n, 65, generator=gen).to(driving.device),
            "eye": torch.rand(n, 66, generator=gen).to(driving.device),
        }

    def fn(self, module: str) -> Callable[[], torch.Tensor]:
        m = self.model
        if module == "F":
            return lambda: m.extract_appearance(self.source.expand(self.driving.shape[0], -1, -1, -1))
        if module == "M":
            return lambda: m.extract_motion(self.driving).kp
        if module == "S":
            return lambda: torch.cat([m.run_mlp(k, v) for k, v in self.mlp_in.items()], 1)
        if module == "W":
            return lambda: m.warp(self.f_s_b, self.x_s_b, self.x_d)["out"]
        if module == "G":
            return lambda: m.decode(self.warped)
        return self.frame

    def frame(self) -> torch.Tensor:
        """M + motion transfer + W + G + uint8 frames in host memory: (B, 512, 512, 3)."""
        info = self.model.extract_motion(self.driving)
        x_d = self.transfer(self.src, DrivingMotion(info))
        frames = to_uint8_frames(self.model.render(self.f_s, self.src.x_s, x_d))
        return frames.cpu()


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """torch.cuda.max_memory_allocated (MiB) while fn runs once."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--cuda-graphs", action="store_true", help="CUDA: replay W+G from captured graphs")
    parser.add_argument("--batch", type=int, nargs="+", help="default: 1 2 on CPU, 1 4 8 16 32 on CUDA")
    parser.add_argument("--repeats", type=int, help="timed runs per module (default: 3 CPU, 20 CUDA)")
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed runs (the error check before them warms up too)"
    )
    parser.add_argument("--modules", nargs="+", choices=MODULES, default=list(MODULES))
    parser.add_argument("--json", type=Path, help="also write every timing here")
    args = parser.parse_args(argv)

    device, precision = start_bench(args)
    cuda = device.type == "cuda"
    batches = args.batch or ([1, 4, 8, 16, 32] if cuda else [1, 2])
    repeats = args.repeats or (20 if cuda else 3)
    torch.set_grad_enabled(False)

    config = EngineConfig(weights_dir=weights_dir(args.weights), device=str(device), detector="haar-box")
    eager = load_engine(config.model_copy(update={"optimize": False})).model
    fast = load_engine(
        config.model_copy(update={"precision": precision, "cuda_graphs": args.cuda_graphs})
    ).model
    label = f"optimised {precision}" + (" + CUDA graphs" if args.cuda_graphs and cuda else "")
    table = Table(title=f"ms/frame on {device} (median of `runs` ABBA-interleaved runs)")
    columns = ("module", "batch", "runs", "eager fp32", label, "ratio", "ratio CPU time", "rel L2 vs eager")
    for column in columns:
        table.add_column(column, justify="left" if column == "module" else "right")
    memory = Table(title="peak GPU memory of the per-frame path (torch.cuda.max_memory_allocated, MiB)")
    for column in ("batch", "eager fp32", label):
        memory.add_column(column, justify="right")
    results = []
    for batch in batches:
        source, driving = images(batch, device)
        cases = {"eager": Case(eager, source, driving, batch), "fast": Case(fast, source, driving, batch)}
        for module in args.modules:
            fns = {name: case.fn(module) for name, case in cases.items()}
            sync(device)
            start = time.perf_counter()
            err = rel_l2(fns["fast"]().float(), fns["eager"]().float())
            sync(device)
            # cheap modules get more runs: about 5 s of timing each, up to 25 runs
            runs = max(repeats, min(25, int(5 / max(time.perf_counter() - start, 1e-3))))
            wall, cpu = interleaved(fns, runs, args.warmup, device)
            ms = {k: 1e3 * median(v) / batch for k, v in wall.items()}
            cpu_ratio = median(cpu["fast"]) / median(cpu["eager"])
            table.add_row(
                module,
                str(batch),
                str(runs),
                f"{ms['eager']:.1f}",
                f"{ms['fast']:.1f}",
                f"{ms['fast'] / ms['eager']:.2f}",
                f"{cpu_ratio:.2f}",
                f"{err:.1e}",
            )
            results.append({"module": module, "batch": batch, "err": err, "wall": wall, "cpu": cpu})
            console.print(f"  {module} batch {batch}: {ms['eager']:.1f} -> {ms['fast']:.1f} ms/frame")
        if cuda:
            peaks = [peak_memory(cases[name].frame, device) for name in ("eager", "fast")]
            memory.add_row(str(batch), *(f"{p:.0f}" for p in peaks))
            results.append({"batch": batch, "peak_mib": dict(zip(("eager", "fast"), peaks, strict=True))})
    console.print(table)
    if cuda:
        console.print(memory)
    print_machine(device)  # the load average again, after the run
    if args.json:
        args.json.write_text(json.dumps({"precision": precision, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
