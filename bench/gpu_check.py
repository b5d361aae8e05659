"""The GPU check: every CUDA test and GPU measurement in one command, with the results written as files.

    .venv/bin/python -m bench.gpu_check wheels                 # here, with the network: -> .whl/
    python3 -m bench.gpu_check run --wheels .whl --out "$OUT"  # on the GPU machine (no network)
    .venv/bin/python -m bench.gpu_check run --quick --out DIR  # any CPU machine, in well under a minute

`wheels` downloads the wheels of the packages we need that the GPU machine's image lacks (PyPI's
manylinux x86_64 wheels for CPython 3.12, the versions installed here) into one folder. `run` installs
them there (`pip install --no-index --no-deps --target`, put first on PYTHONPATH: the machine's own
torch, numpy, OpenCV, SciPy and onnxruntime are used) and runs the steps below, each in its own
process under a time limit and all of them under one budget (--budget, default 420 s), writing
OUT/gpu_check.json (every result), OUT/gpu_check.txt (every step's printed tables and log) and
OUT/cuda_tests.xml (the CUDA tests' JUnit report) after each step:

  environment     torch, CUDA, cuDNN, the GPU and the TF32 switches
  golden          the three golden frames in fp32 (TF32 off; and on, for comparison), fp16 and bf16:
                  relative L2 against the float32 golden outputs, against each documented bound
  cuda_tests      pytest -k cuda on the test files with CUDA tests
  modules         bench_modules fp16 at batch 1..32: W, G and the per-frame path, peak memory
  modules_graphs  the same per-frame path with CUDA graphs
  job             bench_job: 500 frames at 512x512, sequential and pipelined (CUDA graphs)
  retargeting     a job with eye and lip retargeting and lip normalisation (200 frames), frames/s
  pasteback       paste_back_frames of 8 frames at 4096x4096: peak memory within the budget, and the
                  same frames as in one piece
  compile         W+G at batch 16 with torch.compile (mode "default", with and without CUDA graphs):
                  compile seconds, ms/frame against the same model uncompiled, relative L2

--quick runs the steps that a CPU can run quickly (environment, golden with one frame, the CUDA
tests' collection, paste-back at 640x480) on the CPU, so that the check stays working:
tests/bench/test_gpu_check.py runs it. `step NAME --quick` runs any other step at its smallest size.
This module imports only the standard library at the top: the project's packages may only be
importable once the wheels are installed.
"""

import argparse
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEEL_PACKAGES = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "av",
)
"""What the GPU machine's image lacks of our engines' dependencies (docs/benchmarks.md, "GPU check")."""
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
WHEELS_MAX_BYTES = 48 << 20
"""The wheels travel with the working tree (~16 MB), 64 MiB in all."""
CUDA_TEST_FILES = (
    "tests/engines/acceleration/test_inference.py",
    "tests/engines/face/test_pasteback.py",
    "tests/engines/face/test_crop.py",
    "tests/engines/test_engine.py",
)
GOLDEN = ROOT / "tests" / "data" / "golden_seed0.npz"

Step = Callable[[argparse.Namespace], dict[str, Any]]


# --- the steps (each runs in its own process: `python -m bench.gpu_check step NAME`) ----------------


def _device(args: argparse.Namespace) -> Any:
    import torch

    return torch.device(args.device)


def step_environment(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench._common import machine

    info: dict[str, Any] = machine(_device(args))
    info |= {
        "cuda available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32 default (cudnn conv, matmul)": [
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ],
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(_device(args))
        info |= {
            "gpu memory GiB": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
        }
    print(json.dumps(info, indent=1))
    return info


def step_golden(args: argparse.Namespace) -> dict[str, Any]:
    """The golden frames rendered as the pipeline renders them, against the float32 golden outputs."""
    import numpy as np
    import torch

    from common.engine_config import REDUCED_PRECISION_REL_L2
    from engines.acceleration.inference import Precision, optimize_for_inference, use_float32_arithmetic
    from engines.model import LivePortraitModel, image_to_tensor
    from engines.motion.keypoints import source_keypoints
    from engines.weights import write_synthetic_bundle
    from tests.engines.golden_utils import REL_L2, rel_l2

    device = _device(args)
    with np.load(GOLDEN, allow_pickle=False) as data:
        golden = {key: data[key] for key in data.files}
    weights = write_synthetic_bundle(
        Path(tempfile.mkdtemp(prefix="lp-gpu-check-")), int(golden["weights_seed"])
    )
    model = LivePortraitModel.from_weights(weights)
    source = image_to_tensor(torch.from_numpy(golden["source_rgb"])[None]).to(device)
    frames = 1 if args.quick else len(golden["default__x_d"])
    x_d = torch.from_numpy(golden["default__x_d"][:frames]).to(device)
    cases: list[tuple[str, Precision, bool]] = [("fp32", "fp32", False)]
    if device.type == "cuda":
        cases += [("fp32, TF32 on", "fp32", True), ("fp16", "fp16", False), ("bf16", "bf16", False)]
    rows: list[dict[str, Any]] = []
    for name, precision, tf32 in cases:
        use_float32_arithmetic(device)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = (
            tf32 and device.type == "cuda"
        )
        fast = optimize_for_inference(model, device, precision)
        x_s = source_keypoints(fast.extract_motion(source))
        out = fast.render(fast.extract_appearance(source), x_s, x_d).double().cpu().numpy()
        errors = [
            rel_l2(out[i].ravel()[golden[f"G{i}_out__idx"]], golden[f"G{i}_out__val"]) for i in range(frames)
        ]
        bound = REL_L2 if precision == "fp32" else REDUCED_PRECISION_REL_L2[precision]
        rows.append({"case": name, "rel_l2": errors, "bound": bound, "within": max(errors) <= bound})
        del fast
    use_float32_arithmetic(device)
    print(f"{'case':<16} {'rel L2 per golden frame':<36} {'bound':>8}  within")
    for row in rows:
        shown = ", ".join(f"{e:.2e}" for e in row["rel_l2"])
        print(f"{row['case']:<16} {shown:<36} {row['bound']:>8.0e}  {row['within']}")
    return {"frames": frames, "rows": rows, "exit_code": 0 if all(r["within"] for r in rows) else 1}


def step_cuda_tests(args: argparse.Namespace) -> dict[str, Any]:
    import pytest

    xml = Path(args.out) / "cuda_tests.xml"
    files = CUDA_TEST_FILES[1:2] if args.quick else CUDA_TEST_FILES
    code = pytest.main(["-k", "cuda", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}", *files])
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {"exit_code": int(code), "files": list(files), **counts, "failed": failed}


def _bench(module: str, argv: list[str], json_path: Path | None) -> dict[str, Any]:
    """Run bench.`module`.main(argv) here; its printed tables go to this step's log."""
    main = importlib.import_module(f"bench.{module}").main
    code = main(argv)
    result: dict[str, Any] = {"argv": argv, "exit_code": code}
    if json_path is not None and json_path.is_file():
        result["json"] = json.loads(json_path.read_text())
    return result


def _modules(args: argparse.Namespace, graphs: bool) -> dict[str, Any]:
    json_path = Path(tempfile.mkdtemp(prefix="lp-gpu-check-")) / "modules.json"
    if args.quick:
        argv = ["--device", "cpu", "--batch", "1", "--modules", "S", "--repeats", "1"]
    else:
        modules = ["frame"] if graphs else ["W", "G", "frame"]
        argv = ["--device", args.device, "--precision", "fp16", "--batch", "1", "4", "16", "32"]
        argv += ["--modules", *modules, "--repeats", "10", "--warmup", "2"]
        argv += ["--cuda-graphs"] if graphs else []
    return _bench("bench_modules", [*argv, "--json", str(json_path)], json_path)


def step_modules(args: argparse.Namespace) -> dict[str, Any]:
    return _modules(args, graphs=False)


def step_modules_graphs(args: argparse.Namespace) -> dict[str, Any]:
    return _modules(args, graphs=True)


def step_job(args: argparse.Namespace) -> dict[str, Any]:
    argv = ["--device", args.device, "--precision", "fp16", "--size", "512", "--frames", "500"]
    return _bench("bench_job", [*argv, "--frame-batch", "16", "--repeats", "1", "--cuda-graphs"], None)


def step_retargeting(args: argparse.Namespace) -> dict[str, Any]:
    """A job with eye and lip retargeting on the device: LivePortrait's 203-point landmark model (here
    the synthetic one that the tests generate) seeded by Haar boxes, synthetic F/M/W/G/S."""
    import torch

    from common.engine_config import EngineConfig
    from common.options import AnimationOptions
    from engines.demo import PORTRAIT, write_demo_inputs
    from engines.engine import load_engine
    from engines.face.detection import LANDMARK203_FILE
    from engines.pipeline import Animator
    from engines.request import AnimateRequest
    from engines.weights import write_synthetic_bundle
    from tests.engines.face.test_seeded import make_face_203

    work = Path(tempfile.mkdtemp(prefix="lp-gpu-check-"))
    bundle = write_synthetic_bundle(work / "weights", seed=0)
    make_face_203(bundle / LANDMARK203_FILE)
    cuda = _device(args).type == "cuda"
    config = EngineConfig(
        weights_dir=bundle,
        device=args.device,
        precision="fp16" if cuda else "fp32",
        cuda_graphs=cuda,
        detector="licence-clean",
    )
    animator = Animator(load_engine(config))
    frames = 2 if args.quick else 200
    _, driving = write_demo_inputs(work, n_frames=frames)
    options = AnimationOptions(
        audio="none", flag_eye_retargeting=True, flag_lip_retargeting=True, flag_normalize_lip=True
    )
    seconds = []
    for _ in range(1 if args.quick else 2):  # a warm-up (graph capture), then the timed job
        start = time.perf_counter()
        result = animator.animate(AnimateRequest(PORTRAIT, driving, work / "out.mp4", options))
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    rate = result.frames / seconds[-1]
    print(f"retargeting job: {result.frames} frames, {seconds[-1]:.2f} s, {rate:.1f} frames/s")
    return {"frames": result.frames, "seconds": seconds, "frames_per_s": rate}


def step_pasteback(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from engines.face.crop import CropBox, crop_transform
    from engines.face.pasteback import PASTE_BUDGET_BYTES, paste_back_frames

    device = _device(args)
    batch, height, width = (2, 480, 640) if args.quick else (8, 4096, 4096)
    budget = 12 << 20 if args.quick else PASTE_BUDGET_BYTES
    gen = torch.Generator(device=device).manual_seed(0)
    results = torch.rand(batch, 3, 512, 512, generator=gen, device=device)
    originals = torch.randint(
        0, 256, (batch, height, width, 3), generator=gen, device=device, dtype=torch.uint8
    )
    box = CropBox(center=np.array([width / 2, height / 2]), size=0.7 * min(height, width), angle=0.3)
    M_c2o = np.linalg.inv(crop_transform(box, 512))
    rows: dict[str, dict[str, Any]] = {}
    outputs = []
    for name, bytes_ in (("pieces", budget), ("one piece", 1 << 50)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        start = time.perf_counter()
        out = paste_back_frames(results, M_c2o, originals, budget_bytes=bytes_)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        working = (
            torch.cuda.max_memory_allocated(device) - before - out.nbytes if device.type == "cuda" else None
        )
        rows[name] = {"budget_bytes": bytes_, "seconds": seconds, "working_bytes": working}
        outputs.append(out)
    equal = bool(torch.equal(*outputs))
    within = rows["pieces"]["working_bytes"] is None or rows["pieces"]["working_bytes"] <= budget
    print(f"paste-back of {batch} frames at {width}x{height}: same frames {equal}")
    for name, row in rows.items():
        working = row["working_bytes"]
        mib = "n/a (CPU)" if working is None else f"{working / 2**20:.0f} MiB"
        print(f"  {name:<10} {row['seconds'] * 1e3:8.1f} ms  working set {mib}")
    return {
        "batch": batch,
        "size": [height, width],
        "equal": equal,
        "within_budget": within,
        "rows": rows,
        "exit_code": 0 if equal and within else 1,
    }


def step_compile(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench._common import interleaved, median, rel_l2, weights_dir
    from engines.acceleration.inference import optimize_for_inference, use_float32_arithmetic
    from engines.model import LivePortraitModel

    device, batch = _device(args), 16
    use_float32_arithmetic(device)
    model = LivePortraitModel.from_weights(weights_dir(None))
    gen = torch.Generator().manual_seed(0)
    f_s = torch.randn(1, 32, 16, 64, 64, generator=gen).to(device)
    x_s = (0.3 * torch.randn(1, 21, 3, generator=gen)).to(device)
    x_d = (x_s + 0.02 * torch.randn(batch, 21, 3, generator=gen).to(device)).contiguous()
    rows = []
    for graphs in (True, False):
        plain = optimize_for_inference(model, device, "fp16", cuda_graphs=graphs)
        start = time.perf_counter()
        compiled = optimize_for_inference(model, device, "fp16", cuda_graphs=graphs, compile_mode="default")
        out = compiled.render(f_s, x_s, x_d)  # compiles (and captures)
        torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - start
        expected = plain.render(f_s, x_s, x_d)
        fns = {
            "plain": lambda m=plain: m.render(f_s, x_s, x_d),
            "compiled": lambda m=compiled: m.render(f_s, x_s, x_d),
        }
        wall, _ = interleaved(fns, repeats=20, warmup=2, device=device)
        ms = {k: 1e3 * median(v) / batch for k, v in wall.items()}
        row = {
            "cuda_graphs": graphs,
            "compile_s": compile_s,
            "ms_per_frame": ms,
            "rel_l2": rel_l2(out, expected),
        }
        rows.append(row)
        print(
            f"W+G fp16 batch {batch}, CUDA graphs {graphs}: compile {compile_s:.0f} s, "
            f"{ms['plain']:.2f} -> {ms['compiled']:.2f} ms/frame, rel L2 {row['rel_l2']:.1e}"
        )
        del plain, compiled
    return {"batch": batch, "mode": "default", "rows": rows}


STEPS: dict[str, tuple[Step, float, str | None]] = {
    # name: (function, time limit in s, why --quick skips it)
    "environment": (step_environment, 60, None),
    "golden": (step_golden, 90, None),
    "cuda_tests": (step_cuda_tests, 150, None),
    "modules": (step_modules, 120, "it loads two engines and runs W+G: ~45 s on a 2-core CPU"),
    "modules_graphs": (step_modules_graphs, 75, "CUDA graphs need a CUDA device"),
    "job": (step_job, 120, "a whole job takes minutes of W+G on a CPU"),
    "retargeting": (step_retargeting, 60, "a 2-frame job takes ~40 s on a 2-core CPU"),
    "pasteback": (step_pasteback, 45, None),
    "compile": (step_compile, 150, "torch.compile of W and G takes ~10 min on a 2-core CPU"),
}


# --- the orchestrator (standard library only) -------------------------------------------------------


def _run_limited(cmd: list[str], limit: float, env: dict[str, str], log: Path) -> str:
    """Run cmd with its output in `log`; its whole process group is killed past `limit` seconds.
    Returns "ok", "failed" or "timeout"."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return "ok" if proc.wait(timeout=limit) == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"


def install_wheels(wheels: Path, target: Path) -> None:
    """Install every wheel of `wheels` into `target` with no index and no dependency resolution."""
    files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
    if not files:
        raise SystemExit(
            f"no wheels in {wheels}: run `python -m bench.gpu_check wheels` where pip has the network"
        )
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    subprocess.run([*cmd, "--no-cache-dir", "--upgrade", "--target", str(target), *files], check=True)


def _summary_line(name: str, record: dict[str, Any]) -> str:
    return f"{name:<16} {record['status']:<8} {record['seconds']:7.1f} s  {record.get('note', '')}"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lp-gpu-check-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.wheels:
        install_wheels(Path(args.wheels), work / "site")
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(work / "site"), str(ROOT), env.get("PYTHONPATH")])
        )
    device = args.device or ("cpu" if args.quick else "cuda")
    deadline = time.monotonic() + args.budget
    records: dict[str, dict[str, Any]] = {}
    text = out / "gpu_check.txt"
    text.write_text(f"GPU check, {time.strftime('%Y-%m-%d %H:%M:%S')}, device {device}, quick {args.quick}\n")
    for name in args.steps or list(STEPS):
        _, limit, quick_skip = STEPS[name]
        left = deadline - time.monotonic()
        if args.quick and quick_skip:
            records[name] = {"status": "skipped", "seconds": 0.0, "note": quick_skip}
        elif left < 15:
            records[name] = {"status": "skipped", "seconds": 0.0, "note": "no time left in the budget"}
        else:
            cmd = [sys.executable, "-m", "bench.gpu_check", "step", name, "--out", str(out)]
            cmd += ["--work", str(work), "--device", device] + (["--quick"] if args.quick else [])
            start = time.monotonic()
            status = _run_limited(cmd, min(limit, left), env, work / f"{name}.log")
            records[name] = {"status": status, "seconds": time.monotonic() - start}
            result = work / f"{name}.json"
            if result.is_file():
                records[name]["result"] = json.loads(result.read_text())
            with text.open("a") as log:
                log.write(f"\n===== {name}: {status} ({records[name]['seconds']:.1f} s)\n")
                log.write((work / f"{name}.log").read_text(errors="replace"))
        print(_summary_line(name, records[name]), flush=True)
        (out / "gpu_check.json").write_text(
            json.dumps({"device": device, "quick": args.quick, "steps": records}, indent=1)
        )
    with text.open("a") as log:
        log.write("\n===== summary\n" + "\n".join(_summary_line(n, r) for n, r in records.items()) + "\n")
    return 0 if all(r["status"] in ("ok", "skipped") for r in records.values()) else 1


def run_step(args: argparse.Namespace) -> int:
    """One step; its result in WORK/NAME.json. Fails when the step reports a non-zero exit code (a failed
    test, a bound exceeded, a benchmark's error)."""
    result = STEPS[args.name][0](args)
    (Path(args.work) / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0 if result.get("exit_code", 0) == 0 else 1


# --- the wheels that travel to the GPU machine --------------------------------------------------------


def wheel_requirements() -> list[str]:
    """name==version of each package of WHEEL_PACKAGES, at the version installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in WHEEL_PACKAGES]


def download_command(dest: Path) -> list[str]:
    platforms = [flag for platform in WHEEL_PLATFORMS for flag in ("--platform", platform)]
    return [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
        *("--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest)),
        *wheel_requirements(),
    ]


def check_wheels(dest: Path) -> int:
    """The total size of the wheels in `dest`, checked: one wheel per package, within WHEELS_MAX_BYTES."""
    wheels = sorted(Path(dest).glob("*.whl"))
    names = [w.name.split("-")[0].lower().replace("_", "-") for w in wheels]
    if sorted(names) != sorted(WHEEL_PACKAGES):
        raise SystemExit(f"{dest}: expected one wheel of each of {sorted(WHEEL_PACKAGES)}, found {names}")
    total = sum(w.stat().st_size for w in wheels)
    if total > WHEELS_MAX_BYTES:
        raise SystemExit(f"{dest}: {total / 2**20:.1f} MiB of wheels, more than {WHEELS_MAX_BYTES >> 20} MiB")
    return total


def wheels(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    subprocess.run(download_command(dest), check=True)
    print(f"{dest}: {check_wheels(dest) / 2**20:.1f} MiB of wheels for Python 3.12 x86_64")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheels", help="download the wheels that the GPU machine lacks")
    w.add_argument("--dest", default=str(ROOT / ".whl"))
    r = sub.add_parser("run", help="run the check")
    r.add_argument(
        "--out", default=os.environ.get("OUT") or "gpu-check", help="results folder (default $OUT)"
    )
    r.add_argument("--wheels", help="install these wheels first (the GPU machine)")
    r.add_argument("--quick", action="store_true", help="the CPU steps only, smallest sizes")
    r.add_argument("--device", help="default: cuda (cpu with --quick)")
    r.add_argument("--budget", type=float, default=420.0, help="seconds for all the steps together")
    r.add_argument("--steps", nargs="+", choices=list(STEPS), help="default: all")
    s = sub.add_parser("step", help="one step (run by `run` in its own process)")
    s.add_argument("name", choices=list(STEPS))
    s.add_argument("--out", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--device", required=True)
    s.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    return {"wheels": wheels, "run": run, "step": run_step}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
