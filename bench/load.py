"""Load test of the job service on loopback: gateways, Redis, local store and workers, no model.

    .venv/bin/python -m bench.load                                  # 1,000 submissions, 10,000 polls
    .venv/bin/python -m bench.load --submissions 200 --polls 2000 --clients 16 --timeout 120

It starts `--gateways` gateway processes (uvicorn, as `liveportrait gateway` runs them) on free
loopback ports and `--workers` worker processes, all sharing one Redis (a fresh key prefix in
`--redis-url`, deleted afterwards) and one local store in a temporary directory. The workers run a
stand-in animator that copies the source image to the output: no model runs, so what is measured
is the service (HTTP, multipart parsing and input checks, Redis, RQ, storage), not LivePortrait.

`--clients` concurrent clients (asyncio, keep-alive connections, spread over the gateways) send
the submissions (multipart: a 64x64 PNG and a 4-frame 64x64 MP4) and the polls (GET of a random
accepted job) interleaved, one poll-heavy mix for the whole run. Then it waits for every accepted
job to end and verifies: every accepted id is distinct, succeeded, was attempted once and
animated exactly once (the stand-in counts its calls per job id in Redis), the queues are empty,
and GET /v1/jobs lists exactly the accepted jobs. It prints throughput and p50/p99 latency of
submissions and polls, job latency (created -> finished), and exits 1 if any check fails. The
whole run is bounded by `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.progress import RENDERING, ProgressEvent

if TYPE_CHECKING:
    from engines.request import AnimateRequest

REPO = Path(__file__).resolve().parents[1]
API_KEY = "load-test-key"
STAND_IN = "STAND-IN MODEL: the workers copy the source image; no LivePortrait network runs."


# --- the stand-in animator and the processes ----------------------------------------------------


@dataclass
class StandInResult:
    """What the stand-in returns (the shape of engines.pipeline's result)."""

    output: Path
    frames: int
    fps: float


class StandInAnimator:
    """Copies the source to the output and counts its calls per job id in Redis: no model at all."""

    def __init__(self, redis_url: str, runs_key: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(redis_url)
        self._runs_key = runs_key

    def animate(self, request: AnimateRequest) -> StandInResult:
        """Copy `source` to `output` (no expression applied), report one frame rendered, count this call."""
        from rq import get_current_job

        job = get_current_job()
        self._redis.hincrby(self._runs_key, job.id if job else "outside-a-job", 1)
        shutil.copyfile(request.source, request.output)
        if request.progress is not None:
            request.progress(ProgressEvent(RENDERING, 1, 1))
        return StandInResult(output=Path(request.output), frames=1, fps=25.0)


def run_worker() -> None:
    """A worker process with the stand-in animator (settings from LIVEPORTRAIT_* variables)."""
    from service.logs import configure_logging
    from service.settings import Settings
    from worker.runner import WorkerEngine
    from worker.worker import build_worker

    settings = Settings()
    configure_logging(settings)
    animator = StandInAnimator(settings.redis_url, runs_key(settings.queue_prefix))
    engine = WorkerEngine(animator=animator)
    build_worker(settings, engine, idle_poll_s=1).work(logging_level=settings.log_level.upper())


def run_gateway() -> None:
    """A gateway process (settings from LIVEPORTRAIT_* variables)."""
    from service.gateway import serve

    serve()


def runs_key(prefix: str) -> str:
    """The Redis hash counting the stand-in's calls per job id."""
    return f"{prefix}:bench:runs"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """The processes of one run and their shared environment."""

    env: dict[str, str]
    logs: Path
    gateways: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, role: str, index: int, extra: dict[str, str] | None = None) -> None:
        """Start `python -m bench.load --role ROLE` with the shared environment."""
        log = (self.logs / f"{role}-{index}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.load", "--role", role],
            env={**self.env, **(extra or {})},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)

    def stop(self) -> None:
        """SIGTERM everything, then SIGKILL what is still running after 15 s."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def cluster(args: argparse.Namespace, prefix: str, root: Path) -> Iterator[Cluster]:
    """Gateways and workers sharing Redis (under `prefix`) and a local store under `root`."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LIVEPORTRAIT_REDIS_URL": args.redis_url,
        "LIVEPORTRAIT_QUEUE_PREFIX": prefix,
        "LIVEPORTRAIT_STORAGE_BACKEND": "local",
        "LIVEPORTRAIT_LOCAL_STORAGE_DIR": str(root / "store"),
        "LIVEPORTRAIT_WORK_DIR": str(root / "work"),
        "LIVEPORTRAIT_API_KEYS": hashlib.sha256(API_KEY.encode()).hexdigest(),
        "LIVEPORTRAIT_HOST": "127.0.0.1",
        "LIVEPORTRAIT_LOG_LEVEL": "INFO",
        "LIVEPORTRAIT_LOG_JSON": "true",
    }
    logs = root / "logs"
    logs.mkdir()
    running = Cluster(env=env, logs=logs)
    try:
        for index in range(args.gateways):
            port = free_port()
            running.start("gateway", index, {"LIVEPORTRAIT_PORT": str(port)})
            running.gateways.append(f"http://127.0.0.1:{port}")
        for index in range(args.workers):
            running.start("worker", index, {"LIVEPORTRAIT_WORKER_NAME": f"bench-worker-{index}"})
        yield running
    finally:
        running.stop()


async def wait_ready(urls: list[str], deadline: float) -> None:
    """Wait until every gateway answers /readyz."""
    import httpx

    async with httpx.AsyncClient(timeout=2) as http:
        for url in urls:
            while True:
                try:
                    if (await http.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gateway {url} did not become ready")
                await asyncio.sleep(0.1)


# --- inputs -----------------------------------------------------------------------------------


def make_inputs(directory: Path) -> tuple[bytes, bytes]:
    """A 64x64 PNG portrait stand-in and a 4-frame 64x64 H.264 MP4."""
    import av
    import numpy as np

    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    frames = [
        np.stack(
            [
                np.roll(ramp, 4 * i)[None, :].repeat(64, 0),
                ramp[:, None].repeat(64, 1),
                np.full((64, 64), 128, np.uint8),
            ],
            -1,
        )
        for i in range(4)
    ]
    png = directory / "source.png"
    with av.open(str(png), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 64, 64, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(frames[0], format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    mp4 = directory / "driving.mp4"
    with av.open(str(mp4), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return png.read_bytes(), mp4.read_bytes()


# --- the clients --------------------------------------------------------------------------------


@dataclass
class Stats:
    """What the clients saw."""

    submit_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    statuses: dict[str, dict[int, int]] = field(default_factory=lambda: {"submit": {}, "poll": {}})
    transport_errors: int = 0
    seconds: float = 0.0


async def drive_clients(
    urls: list[str], args: argparse.Namespace, source: bytes, driving: bytes, stats: Stats
) -> None:
    """`args.clients` tasks working through the submissions and polls, interleaved."""
    import httpx

    plan = ["submit"] * args.submissions + ["poll"] * args.polls
    random.Random(args.seed).shuffle(plan)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for operation in plan:
        queue.put_nowait(operation)
    rng = random.Random(args.seed + 1)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) for url in urls]

    async def submit(http: httpx.AsyncClient) -> None:
        files = {"source": ("source.png", source), "driving": ("driving.mp4", driving)}
        started = time.perf_counter()
        response = await http.post("/v1/jobs", files=files)
        stats.submit_ms.append((time.perf_counter() - started) * 1000)
        count(stats.statuses["submit"], response.status_code)
        if response.status_code == 202:
            stats.accepted.append(response.json()["id"])

    async def poll(http: httpx.AsyncClient) -> None:
        job_id = rng.choice(stats.accepted)
        started = time.perf_counter()
        response = await http.get(f"/v1/jobs/{job_id}")
        stats.poll_ms.append((time.perf_counter() - started) * 1000)
        count(stats.statuses["poll"], response.status_code)

    async def client(index: int) -> None:
        http = clients[index % len(clients)]
        while not queue.empty():
            operation = queue.get_nowait()
            try:
                if operation == "poll" and stats.accepted:
                    await poll(http)
                elif operation == "poll":
                    queue.put_nowait(operation)
                    await asyncio.sleep(0.005)
                else:
                    await submit(http)
            except httpx.TransportError:
                stats.transport_errors += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(i) for i in range(args.clients)))
    finally:
        stats.seconds = time.perf_counter() - started
        for http in clients:
            await http.aclose()


def count(table: dict[int, int], status: int) -> None:
    """Count one HTTP status."""
    table[status] = table.get(status, 0) + 1


# --- verification -------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The checks after the run and the jobs' own timings."""

    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    job_ms: list[float] = field(default_factory=list)
    drain_seconds: float = 0.0

    def check(self, name: str, ok: bool, detail: str) -> None:
        """Record one check."""
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(ok for _, ok, _ in self.checks)


def verify(args: argparse.Namespace, prefix: str, urls: list[str], stats: Stats, deadline: float) -> Verdict:
    """Wait for every accepted job to end, then check that each ran exactly once and nothing is lost."""
    import httpx
    import redis

    from service.contract import TERMINAL_STATUSES
    from service.metrics import text
    from service.queue import JobQueue, JobRecord
    from service.settings import Settings

    settings = Settings(redis_url=args.redis_url, queue_prefix=prefix)
    client = redis.Redis.from_url(args.redis_url)
    queue = JobQueue(client, settings)
    verdict = Verdict()
    started = time.monotonic()
    records: dict[str, JobRecord | None] = {}
    pending = list(dict.fromkeys(stats.accepted))
    while pending and time.monotonic() < deadline:
        with client.pipeline(transaction=False) as pipe:
            for job_id in pending:
                pipe.hgetall(queue.job_key(job_id))
            raws = pipe.execute()
        for job_id, raw in zip(pending, raws, strict=True):
            records[job_id] = JobRecord.from_hash(job_id, raw) if raw else None
        pending = [
            job_id
            for job_id in pending
            if (known := records[job_id]) is None or known.status not in TERMINAL_STATUSES
        ]
        if pending:
            time.sleep(0.2)
    verdict.drain_seconds = time.monotonic() - started
    accepted = stats.accepted
    submitted_ok = stats.statuses["submit"].get(202, 0)
    verdict.check("accepted ids are distinct", len(set(accepted)) == len(accepted), f"{len(accepted)} ids")
    verdict.check("every 202 has an id", submitted_ok == len(accepted), f"{submitted_ok} answers 202")
    verdict.check("all jobs ended in time", not pending, f"{len(pending)} still pending")
    statuses: dict[str, int] = {}
    for record in records.values():
        status = record.status if record else "missing"
        statuses[status] = statuses.get(status, 0) + 1
    verdict.check("every job succeeded", statuses == {"succeeded": len(accepted)}, str(statuses))
    attempts = [record.attempts for record in records.values() if record]
    verdict.check(
        "every job was attempted once", set(attempts) <= {1}, f"attempts seen: {sorted(set(attempts))}"
    )
    runs = {text(k): int(v) for k, v in client.hgetall(runs_key(prefix)).items()}
    duplicated = [job_id for job_id, n in runs.items() if n != 1]
    unknown = set(runs) - set(accepted)
    verdict.check(
        "the model ran exactly once per job",
        not duplicated and not unknown and len(runs) == len(accepted),
        f"{len(runs)} jobs animated, {len(duplicated)} more than once, {len(unknown)} never accepted",
    )
    depths = queue.depths()
    verdict.check("the queues are empty", sum(depths.values()) == 0, str(depths))
    listed = list_all(httpx, urls[0])
    verdict.check(
        "GET /v1/jobs lists exactly the accepted jobs",
        sorted(listed) == sorted(accepted),
        f"{len(listed)} listed",
    )
    verdict.job_ms = [
        (record.finished_at - record.created_at) * 1000
        for record in records.values()
        if record and record.finished_at
    ]
    client.close()
    return verdict


def list_all(httpx: Any, url: str) -> list[str]:
    """Every job id GET /v1/jobs lists for the load test's key."""
    found: list[str] = []
    cursor = None
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = http.get("/v1/jobs", params=params).json()
            found += [job["id"] for job in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return found


# --- report -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def machine(redis_url: str) -> str:
    """CPU, cores, Python and Redis versions."""
    import redis

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    client = redis.Redis.from_url(redis_url)
    version = client.info("server")["redis_version"]
    client.close()
    cores = len(os.sched_getaffinity(0))
    return f"{cpu}, {cores} cores; Python {platform.python_version()}; Redis {version}"


def report(args: argparse.Namespace, stats: Stats, verdict: Verdict, redis_url: str) -> None:
    """Print the configuration, the latency table and the checks."""
    print(f"\n{STAND_IN}")
    print(f"machine: {machine(redis_url)}")
    print(
        f"setup: {args.gateways} gateways, {args.workers} workers, {args.clients} clients, "
        f"{args.submissions} submissions + {args.polls} polls interleaved in {stats.seconds:.1f} s; "
        f"transport errors {stats.transport_errors}"
    )
    print(f"HTTP statuses: submit {stats.statuses['submit']}, poll {stats.statuses['poll']}\n")
    print("| operation | count | throughput (/s) | p50 (ms) | p99 (ms) | max (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [
        ("submit (POST /v1/jobs, multipart)", stats.submit_ms),
        ("poll (GET /v1/jobs/{id})", stats.poll_ms),
        ("all requests", stats.submit_ms + stats.poll_ms),
    ]
    for name, values in rows:
        if values:
            print(
                f"| {name} | {len(values)} | {len(values) / stats.seconds:.0f} | "
                f"{statistics.median(values):.1f} | {percentile(values, 0.99):.1f} | {max(values):.1f} |"
            )
    if verdict.job_ms:
        total = stats.seconds + verdict.drain_seconds
        print(
            f"| job, created -> succeeded | {len(verdict.job_ms)} | {len(verdict.job_ms) / total:.0f} | "
            f"{statistics.median(verdict.job_ms):.1f} | {percentile(verdict.job_ms, 0.99):.1f} | "
            f"{max(verdict.job_ms):.1f} |"
        )
    print()
    for name, ok, detail in verdict.checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name} ({detail})")
    print(f"\n{'ALL CHECKS PASSED' if verdict.ok else 'SOME CHECKS FAILED'}; {STAND_IN}")


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--role", choices=["bench", "gateway", "worker"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=32, help="concurrent client tasks")
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run, in seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.role == "bench" and (
        args.submissions < 1 or args.polls < 0 or args.clients < 1 or args.gateways < 1
    ):
        parser.error("need at least one submission, client and gateway")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the load test (or, with --role, one of its gateway or worker processes)."""
    args = parse_args(argv)
    if args.role == "gateway":
        run_gateway()
        return 0
    if args.role == "worker":
        run_worker()
        return 0
    from tests.redis_keys import purge_prefix

    deadline = time.monotonic() + args.timeout
    prefix = f"lpbench-{uuid.uuid4().hex[:8]}"
    stats = Stats()
    with tempfile.TemporaryDirectory(prefix="lp-load-") as tmp:
        root = Path(tmp)
        source, driving = make_inputs(root)
        try:
            with cluster(args, prefix, root) as running:
                asyncio.run(wait_ready(running.gateways, deadline))
                print(
                    f"{STAND_IN}\nrunning {args.submissions} submissions and {args.polls} polls "
                    f"through {len(running.gateways)} gateways ...",
                    flush=True,
                )
                remaining = max(1.0, deadline - time.monotonic())
                try:
                    asyncio.run(
                        asyncio.wait_for(
                            drive_clients(running.gateways, args, source, driving, stats), remaining
                        )
                    )
                except TimeoutError:
                    print(f"the client phase hit --timeout {args.timeout:g} s", flush=True)
                verdict = verify(args, prefix, running.gateways, stats, deadline)
            report(args, stats, verdict, args.redis_url)
        finally:
            purge_prefix(args.redis_url, prefix, stats.accepted)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
