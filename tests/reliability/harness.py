"""Real components the reliability tests start, stop and break: a private redis-server, a
switchable TCP proxy (an S3 outage in front of moto), and worker subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import boto3
import redis
from pydantic import SecretStr

from service.contract import InputLocation, JobPayload
from service.queue import JobQueue, JobRecord
from service.settings import Settings
from service.storage import Store
from tests.conftest import free_port
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def finished(record: JobRecord | None) -> bool:
    """Whether the job reached a terminal status."""
    return record is not None and record.status in ("succeeded", "failed", "canceled")


def wait_for_job(
    queue: JobQueue, job_id: str, done: Callable[[JobRecord], bool] = finished, timeout: float = 30.0
) -> JobRecord:
    """Poll the job's record until `done(record)`; returns it."""

    def check() -> JobRecord | None:
        record = queue.get(job_id)
        return record if record is not None and done(record) else None

    return wait_until(check, timeout, f"job {job_id}")


def submit(queue: JobQueue, store: Store, source: Path, driving: Path) -> str:
    """Store the inputs as the gateway does and enqueue a job; returns its id."""
    job_id = uuid.uuid4().hex
    locations = {}
    for name, path in (("source", source), ("driving", driving)):
        key = f"inputs/{job_id}/{name}{path.suffix}"
        store.put(key, path)
        locations[name] = InputLocation(key=key)
    payload = JobPayload(job_id=job_id, source=locations["source"], driving=locations["driving"])
    queue.submit(payload, "default", owner="open")
    return job_id


@lru_cache
def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client straight to `endpoint` with the test credentials (one per endpoint)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    """The object keys under `prefix` in `bucket`."""
    listing = s3_client(endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def settings_env(settings: Settings) -> dict[str, str]:
    """The LIVEPORTRAIT_* variables that make `Settings()` in a subprocess equal `settings`."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, list | dict):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"LIVEPORTRAIT_{name.upper()}"] = text
    return env


class RedisServer:
    """A private redis-server on a free loopback port, its data in `directory`.

    With `appendonly` every write is fsynced to the AOF before Redis answers (appendfsync always)
    and RDB snapshots are off, so a restart recovers exactly what was acknowledged.
    """

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The server's URL (db 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again, on the same port and directory) and wait until it answers."""
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            wait_until(self._answers(client), timeout, "redis-server to start")
        finally:
            client.close()

    def _answers(self, client: redis.Redis) -> Callable[[], bool]:
        def ping() -> bool:
            assert self.process is not None and self.process.poll() is None, "redis-server exited"
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False

        return ping

    def shutdown_nosave(self) -> None:
        """SHUTDOWN NOSAVE: stop at once, writing no snapshot (the AOF is all that remains)."""
        client = redis.Redis.from_url(self.url)
        with suppress(redis.exceptions.ConnectionError):
            client.shutdown(nosave=True)
        client.close()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            self.process.wait(timeout=10)


@contextmanager
def redis_server(directory: Path, *, appendonly: bool = True) -> Iterator[RedisServer]:
    """A started RedisServer, killed at exit."""
    server = RedisServer(directory, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class TcpProxy:
    """A loopback TCP proxy to `upstream` that can be switched off: S3 going away and coming back.

    Off, it drops every open connection and resets new ones at once. `cut_after(n)` switches it
    off by itself once `n` more bytes went upstream (an outage in the middle of an upload).
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._enabled = True
        self._budget: int | None = None
        self.refused = 0
        self.forwarded_bytes = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>."""
        return f"http://127.0.0.1:{self.port}"

    def enable(self) -> None:
        """Forward connections again."""
        with self._lock:
            self._enabled = True

    def disable(self) -> None:
        """Drop every open connection and refuse new ones."""
        with self._lock:
            self._enabled = False
            self._budget = None
            connections, self._open = self._open, set()
        for conn in connections:
            _hard_close(conn)

    def cut_after(self, n_bytes: int) -> None:
        """Switch off once `n_bytes` more bytes were forwarded upstream."""
        with self._lock:
            self._budget = n_bytes

    def close(self) -> None:
        """Stop listening and drop everything."""
        self.disable()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                enabled = self._enabled
                if not enabled:
                    self.refused += 1
            if not enabled:
                _hard_close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _hard_close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream_bound: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream_bound:
                    with self._lock:
                        self.forwarded_bytes += len(data)
                        if self._budget is not None:
                            self._budget -= len(data)
                        cut = self._budget is not None and self._budget <= 0
                    if cut:
                        self.disable()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def _hard_close(conn: socket.socket) -> None:
    """Close with a TCP reset, as a crashed server would (shutdown first wakes a blocked recv)."""
    with suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        conn.close()


class WorkerProcess:
    """`python -m tests.reliability.worker_entry` with `settings`: a real worker process running
    the engine double, which tests can SIGKILL, SIGSTOP and SIGCONT."""

    def __init__(self, settings: Settings, name: str, log_dir: Path, *, frame_delay: float = 0.0) -> None:
        self.name = f"{name}-{uuid.uuid4().hex[:8]}"  # RQ refuses a name a dead worker still holds
        self.log_path = log_dir / f"{name}.log"
        self.env = {
            **os.environ,
            **settings_env(settings),
            "LIVEPORTRAIT_WORKER_NAME": self.name,
            "LIVEPORTRAIT_LOG_JSON": "false",
            "LIVEPORTRAIT_TEST_FRAME_DELAY": str(frame_delay),
            "PYTHONPATH": str(REPO),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Spawn the process (it registers with Redis within a couple of seconds)."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.worker_entry"],
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the process."""
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        if self.alive:
            self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        """Warm shutdown (SIGTERM); returns the exit status."""
        assert self.process is not None
        if self.alive:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        """Kill it if needed and close its log."""
        self.kill()
        if self._log is not None:
            self._log.close()


@contextmanager
def worker_processes(settings: Settings, log_dir: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`spawn(name, frame_delay=...)` starts WorkerProcesses; all are killed at exit."""
    started: list[WorkerProcess] = []

    def spawn(name: str, *, frame_delay: float = 0.0) -> WorkerProcess:
        worker = WorkerProcess(settings, name, log_dir, frame_delay=frame_delay).start()
        started.append(worker)
        return worker

    try:
        yield spawn
    finally:
        for worker in started:
            worker.close()
