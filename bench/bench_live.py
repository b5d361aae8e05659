"""Latency of live sessions on loopback: what the service adds to each frame, with a stand-in model.

    .venv/bin/python -m bench.bench_live                          # 1, 4 and 16 sessions, 8 s each
    .venv/bin/python -m bench.bench_live --sessions 1 4 --seconds 20

It starts a gateway process (as `liveportrait gateway` runs it) and a worker process running the live
server (worker.live, as `liveportrait worker` runs it) on bench.standin's STAND-IN MODEL (the shapes
of F, M, W, G and S, no network), sharing one Redis (a fresh key prefix, deleted afterwards) and a
local store. Then, for each number of sessions, that many clients (threads of this process) each
open a session (`output_kind` crop, the default options) and send 512 x 512 JPEG camera frames of a
swaying head at `--fps` for `--seconds`, reading the answers in another thread. A frame's latency is
from its send to its animated frame's arrival: JPEG decode, the driving crop (face tracking), the
stand-in's M/W/G (its `render` column: tensor fills of the real shapes, not the networks), compose,
JPEG encode, and the WebSocket hops. Each configuration runs twice, in the same run: through the
gateway (client -> gateway -> worker and back, what clients get) and straight to the worker (the
baseline: the gateway's relay is the difference). Frames the worker dropped (a newer one arrived
first: latest wins) are counted, not timed. The `added` columns are each frame's latency less its
own render time (the stand-in's M, transfer and W+G, which a real model replaces): the latency the
service adds around the model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
SPLIT = ("decode", "track", "render", "encode", "worker")
"""The worker's latency split (a frame's `stats`) reported, by its median."""


def run_worker() -> None:
    """A live worker process on the stand-in model (settings from LIVEPORTRAIT_* variables)."""
    from bench.standin import stand_in_engine
    from service.logs import configure_logging
    from service.settings import Settings
    from worker.live import LiveServer

    settings = Settings()
    configure_logging(settings)
    LiveServer(settings, stand_in_engine(), name="bench-live").start()
    threading.Event().wait()


@dataclass
class Session:
    """One client's frames: send times by seq, latencies (s) and the worker's split of each answer."""

    sent: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    splits: list[dict[str, float]] = field(default_factory=list)
    dropped: int = 0


def drive(url: str, frames: list[bytes], fps: float, seconds: float, direct: bool, source: Path) -> Session:
    """Open a session, send frames at `fps` for `seconds`, and time every answer."""
    from common.live import Dropped
    from service.client import Client
    from service.live import RELAY_HEADER, LiveRegistry, worker_url
    from service.live_client import Closed, LiveConnection, LiveFrame
    from service.queue import connect
    from service.settings import Settings

    with Client(url) as client:
        grant = client.open_live(source)
    if direct:  # claim the token as a gateway does, then connect to the worker itself
        settings = Settings()
        registry = LiveRegistry(connect(settings), settings)
        token = grant.websocket_url.rsplit("token=", 1)[1]
        route = registry.claim(grant.session_id, token)
        assert route is not None, "the token was just granted"
        live = LiveConnection(
            worker_url(route.address, grant.session_id), headers={RELAY_HEADER: route.relay_token}
        )
    else:
        live = LiveConnection(grant.websocket_url)
    record = Session()

    def receive() -> None:
        while not isinstance(item := live.receive(), Closed):
            if isinstance(item, LiveFrame):
                record.latencies.append(time.perf_counter() - record.sent[item.stats.seq])
                record.splits.append(item.stats.latency_ms)
            elif isinstance(item, Dropped):
                record.dropped += 1

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    start = time.perf_counter()
    for seq in range(round(seconds * fps)):
        time.sleep(max(0.0, start + seq / fps - time.perf_counter()))
        record.sent[seq] = time.perf_counter()
        live.send_frame(frames[seq % len(frames)])
    deadline = time.monotonic() + 5
    while len(record.latencies) + record.dropped < len(record.sent) and time.monotonic() < deadline:
        time.sleep(0.01)  # the last answers on their way
    live.close()
    reader.join(timeout=10)
    return record


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextmanager
def services(redis_url: str, slots: int, root: Path) -> Iterator[str]:
    """A gateway and a live worker process; yields the gateway's URL once the worker is advertised."""
    import redis

    from bench.bench_gateway import process
    from bench.load import free_port

    prefix = f"bench-live-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LIVEPORTRAIT_REDIS_URL": redis_url,
        "LIVEPORTRAIT_QUEUE_PREFIX": prefix,
        "LIVEPORTRAIT_STORAGE_BACKEND": "local",
        "LIVEPORTRAIT_LOCAL_STORAGE_DIR": str(root / "store"),
        "LIVEPORTRAIT_PORT": str(port),
        "LIVEPORTRAIT_LIVE_PORT": "0",
        "LIVEPORTRAIT_LIVE_SLOTS": str(slots),
        "LIVEPORTRAIT_LOG_LEVEL": "WARNING",
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("LIVEPORTRAIT_")})  # drive()'s Settings
    url = f"http://127.0.0.1:{port}"
    client = redis.Redis.from_url(redis_url)
    gateway = [sys.executable, "-m", "bench.load", "--role", "gateway"]
    with process(gateway, env, f"{url}/readyz", {}), (root / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_live", "--role", "worker"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while not client.zcard(f"{prefix}:live:workers"):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the live worker did not start; its log: {root / 'worker.log'}")
                time.sleep(0.2)
            yield url
        finally:
            worker.terminate()
            worker.wait(timeout=15)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--role", choices=["bench", "gateway", "worker"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=8.0, help="sending time of each configuration")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args(argv)
    if args.role != "bench":
        from bench.load import run_gateway

        {"gateway": run_gateway, "worker": run_worker}[args.role]()
        return 0

    import cv2
    import numpy as np

    from bench.load import machine
    from bench.standin import STAND_IN
    from engines.demo import head_motion_frames, portrait

    root = Path(tempfile.mkdtemp(prefix="bench-live-"))
    frames = [
        cv2.imencode(".jpg", np.ascontiguousarray(f[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        for f in head_motion_frames(portrait(), 50, size=512)
    ]
    source = root / "portrait.png"
    cv2.imwrite(str(source), portrait()[..., ::-1])
    rows = []
    with services(args.redis_url, max(args.sessions), root) as url:
        for sessions in args.sessions:
            for direct in (False, True):
                with ThreadPoolExecutor(sessions) as pool:
                    runs = [
                        pool.submit(drive, url, frames, args.fps, args.seconds, direct, source)
                        for _ in range(sessions)
                    ]
                    records = [run.result() for run in runs]
                latencies = [x for r in records for x in r.latencies]
                splits = [s for r in records for s in r.splits]
                added = [x - split["render"] / 1000 for x, split in zip(latencies, splits, strict=True)]
                rows.append(
                    (
                        sessions,
                        "worker direct (baseline)" if direct else "through the gateway",
                        sum(len(r.sent) for r in records),
                        len(latencies),
                        sum(r.dropped for r in records),
                        1000 * percentile(latencies, 0.5),
                        1000 * percentile(latencies, 0.99),
                        1000 * percentile(added, 0.5),
                        1000 * percentile(added, 0.99),
                        {k: median(s[k] for s in splits) for k in SPLIT},
                    )
                )
    shutil.rmtree(root, ignore_errors=True)
    print(f"\n{STAND_IN}")
    print(f"machine: {machine(args.redis_url)}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"512 x 512 JPEG frames at {args.fps:g} fps, {args.seconds:g} s per configuration, output crop\n")
    print(
        "| sessions | path | frames sent | answered | dropped | p50 ms | p99 ms | added p50 ms "
        "| added p99 ms | worker p50 ms: decode / track / render / encode / all |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for sessions, path, sent, answered, dropped, p50, p99, added50, added99, split in rows:
        worker = " / ".join(f"{split[k]:.1f}" for k in SPLIT)
        print(
            f"| {sessions} | {path} | {sent} | {answered} | {dropped} | {p50:.1f} | {p99:.1f} "
            f"| {added50:.1f} | {added99:.1f} | {worker} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
