"""Shared pieces of the benchmarks: the machine, synthetic weights, interleaved timing, tables."""

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

console = Console()


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, torch, threads, GPU, load average."""
    info = {
        "cpu": cpu_model(),
        "cores": str(len(os.sched_getaffinity(0))),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "load average (1, 5, 15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    return info


def print_machine(device: torch.device) -> None:
    table = Table(title="machine", show_header=False)
    for key, value in machine(device).items():
        table.add_row(key, value)
    console.print(table)


def weights_dir(path: str | None) -> Path:
    """`path`, or a synthetic bundle (seed 0) written to a temporary directory once per run."""
    if path:
        return Path(path)
    from engines.weights import write_synthetic_bundle

    return write_synthetic_bundle(Path(tempfile.mkdtemp(prefix="lp-bench-weights-")), seed=0)


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser with the flags of every engine benchmark: --device, --precision,
    --threads and --weights (the benchmark adds its own)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default: fp32 CPU, fp16 CUDA")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--weights", help="weights directory (default: a synthetic bundle)")
    return parser


def start_bench(args: argparse.Namespace) -> tuple[torch.device, str]:
    """The device and precision (default fp16 on CUDA, fp32 elsewhere) of `bench_parser`'s
    flags; sets torch's threads and prints the machine."""
    device = torch.device(args.device)
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine(device)
    return device, precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds of each function, `repeats` times, run in turns (ABBA order, so
    that drift in the machine's load hits every function alike) after `warmup` untimed turns."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def median(values: list[float]) -> float:
    return statistics.median(values)


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))
