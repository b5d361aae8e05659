"""The gateway's read path against a bare FastAPI endpoint doing the same Redis read, in one run.

    .venv/bin/python -m bench.bench_gateway                       # 3 rounds of 10 s each, wrk -t2 -c32
    .venv/bin/python -m bench.bench_gateway --rounds 5 --duration 20 --connections 64

Two servers run side by side, each in its own process, with the same uvicorn (uvloop, httptools, one
worker) against the same Redis and the same job:

- **gateway**: `liveportrait gateway` as deployed (API keys on, JSON logs with an access line per
  request, webhook dispatcher and stall watch running), serving ``GET /v1/jobs/{id}``;
- **bare**: a FastAPI app with one async endpoint that does the same read (HGETALL of the job's
  hash on redis.asyncio) and answers the hash as JSON (orjson), no middleware, no auth, no logs.

wrk (`apt-get install wrk`) loads each in turn, alternating (ABAB...), so load from the rest of the
machine falls on both alike; the table gives the median over rounds of requests/s and of the p50
and p99 latencies wrk reports, and the ratios gateway/bare. Targets: throughput >= 0.8 x bare,
p99 <= 1.5 x bare. wrk is required: a Python load generator on the same two cores would measure
itself more than the servers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-gateway-key"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bare_app(redis_url: str, prefix: str) -> object:
    """The baseline: one async endpoint, the same HGETALL, the hash as JSON."""
    import orjson
    from fastapi import FastAPI
    from fastapi.responses import Response
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    app = FastAPI()

    @app.get("/bare/{job_id}")
    async def bare(job_id: str) -> Response:
        raw = await client.hgetall(f"{prefix}:job:{job_id}")
        fields = cast(dict[bytes, bytes], raw)  # this client answers bytes
        body = orjson.dumps({k.decode(): v.decode() for k, v in fields.items()})
        return Response(body, media_type="application/json")

    return app


def serve_bare(port: int, redis_url: str, prefix: str) -> None:
    """Run the baseline under uvicorn as the gateway runs (uvloop, httptools, one process)."""
    import uvicorn

    uvicorn.run(
        bare_app(redis_url, prefix),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def process(
    args: list[str], env: dict[str, str], ready_url: str, headers: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess, yielded once `ready_url` answers 200; terminated at exit."""
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args} exited with {proc.returncode}")
            try:
                if httpx.get(ready_url, headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready_url} did not answer")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(
    url: str, headers: dict[str, str], threads: int, connections: int, seconds: int, pid: int
) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 latency (ms), non-2xx answers, server CPU µs per request."""
    cpu = cpu_seconds(pid)
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "cpu_us": (cpu_seconds(pid) - cpu) / max(requests, 1) * 1e6,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(latency["50"]),
        "p99": _ms(latency["99"]),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("LIVEPORTRAIT_REDIS_URL", "redis://127.0.0.1:6379/14")
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--serve-bare", nargs=3, metavar=("PORT", "REDIS_URL", "PREFIX"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1], args.serve_bare[2])
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required: apt-get install wrk")

    from service.contract import InputLocation, JobPayload
    from service.queue import JobQueue
    from service.settings import Settings

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    settings = Settings(redis_url=args.redis_url, queue_prefix=prefix, api_keys=[digest])
    client = redis.Redis.from_url(args.redis_url)
    job_id = uuid.uuid4().hex
    location = InputLocation(key=f"inputs/{job_id}/source.png")
    JobQueue(client, settings).submit(
        JobPayload(job_id=job_id, source=location, driving=location), "default", digest
    )

    gateway_port, bare_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LIVEPORTRAIT_")}
    env.update(
        {
            "LIVEPORTRAIT_REDIS_URL": args.redis_url,
            "LIVEPORTRAIT_QUEUE_PREFIX": prefix,
            "LIVEPORTRAIT_API_KEYS": digest,
            "LIVEPORTRAIT_PORT": str(gateway_port),
            "LIVEPORTRAIT_LOCAL_STORAGE_DIR": str(Path("/tmp") / prefix),
            "LIVEPORTRAIT_PUBLIC_BASE_URL": "http://liveportrait.test",
        }
    )
    auth = {"Authorization": f"Bearer {API_KEY}"}
    urls = {
        "gateway": f"http://127.0.0.1:{gateway_port}/v1/jobs/{job_id}",
        "bare": f"http://127.0.0.1:{bare_port}/bare/{job_id}",
    }
    results: dict[str, list[dict[str, float]]] = {"gateway": [], "bare": []}
    load_before = os.getloadavg()
    try:
        with (
            process(
                [sys.executable, "-m", "liveportrait.cli", "gateway"], env, urls["gateway"], auth
            ) as gateway,
            process(
                [
                    sys.executable,
                    "-m",
                    "bench.bench_gateway",
                    "--serve-bare",
                    str(bare_port),
                    args.redis_url,
                    prefix,
                ],
                env,
                urls["bare"],
                {},
            ) as bare,
        ):
            pids = {"gateway": gateway.pid, "bare": bare.pid}
            for name in ("gateway", "bare"):  # warm-up
                wrk(urls[name], auth, args.threads, args.connections, 2, pids[name])
            for _ in range(args.rounds):
                for name in ("gateway", "bare"):
                    run = wrk(urls[name], auth, args.threads, args.connections, args.duration, pids[name])
                    results[name].append(run)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        shutil.rmtree(Path("/tmp") / prefix, ignore_errors=True)

    def median(name: str, metric: str) -> float:
        return statistics.median(run[metric] for run in results[name])

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.rounds} rounds each, "
        "alternating; medians"
    )
    print("| endpoint | requests/s | p50 ms | p99 ms | server CPU µs/request | non-2xx |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in ("gateway", "bare"):
        print(
            f"| {name} | {median(name, 'rps'):.0f} | {median(name, 'p50'):.2f} | {median(name, 'p99'):.2f} "
            f"| {median(name, 'cpu_us'):.0f} | {sum(run['errors'] for run in results[name]):.0f} |"
        )
    rps = median("gateway", "rps") / median("bare", "rps")
    p99 = median("gateway", "p99") / median("bare", "p99")
    cpu = median("gateway", "cpu_us") / median("bare", "cpu_us")
    print(
        f"| **gateway / bare** | **{rps:.2f}** (target >= 0.8) | | **{p99:.2f}** (target <= 1.5) "
        f"| {cpu:.2f} | |"
    )
    for name in ("gateway", "bare"):
        rounds = ", ".join(f"{run['rps']:.0f}/{run['p99']:.1f}" for run in results[name])
        print(f"{name} rounds (req/s / p99 ms): {rounds}")


if __name__ == "__main__":
    main()
