"""Job metrics kept in Redis, so every worker and gateway contributes to one set of numbers.

Workers and gateways increment counters and histogram buckets in one Redis hash (`{prefix}:metrics`,
each update one MULTI transaction, so a scrape never sees a bucket without its count); workers also
keep their latest render speed and GPU memory peak in `{prefix}:metrics:workers`. The gateway's
/metrics renders all of it, plus live queue depths and worker counts, in the Prometheus text format
at scrape time: every gateway reports the same totals. Metric names carry no per-job labels; the
per-worker gauges are labelled with the worker's name and only report workers that are alive.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis import Redis
from redis.client import Pipeline
from rq.worker import Worker
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from service.contract import PRIORITIES

if TYPE_CHECKING:
    from service.live import Capacity as LiveCapacity
    from service.queue import JobQueue

WAIT_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
FPS_BUCKETS: tuple[float, ...] = (0.25, 0.5, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
LIVE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)
HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "wait": WAIT_BUCKETS,
    "run": RUN_BUCKETS,
    "fps": FPS_BUCKETS,
    "live": LIVE_BUCKETS,
}
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "canceled")


def _bucket_field(name: str, le: float) -> str:
    return f"{name}:le:{le:g}"


def workers_key(metrics_key: str) -> str:
    """The hash of per-worker gauges (one JSON value per worker name)."""
    return f"{metrics_key}:workers"


def observe(pipe: Redis | Pipeline, key: str, name: str, value: float) -> None:
    """Add one observation to histogram `name` (one bucket field, plus sum and count)."""
    buckets = HISTOGRAMS[name]
    le = next((b for b in buckets if value <= b), math.inf)
    pipe.hincrby(key, _bucket_field(name, le), 1)
    pipe.hincrbyfloat(key, f"{name}:sum", max(value, 0.0))
    pipe.hincrby(key, f"{name}:count", 1)


def record_live(
    redis: Redis,
    key: str,
    *,
    frames_in: int,
    frames_out: int,
    dropped: int,
    sessions: int,
    latencies: Sequence[float],
) -> None:
    """A live worker's counts since its last heartbeat: frames in, out and dropped, sessions started, and
    each answered frame's latency on the worker (seconds) in histogram `live`, all in one transaction."""
    buckets: dict[float, int] = {}
    for value in latencies:
        le = next((b for b in LIVE_BUCKETS if value <= b), math.inf)
        buckets[le] = buckets.get(le, 0) + 1
    with redis.pipeline() as pipe:
        for name, count in (
            ("live:frames_in", frames_in),
            ("live:frames_out", frames_out),
            ("live:dropped", dropped),
            ("live:sessions", sessions),
        ):
            if count:
                pipe.hincrby(key, name, count)
        for le, count in buckets.items():
            pipe.hincrby(key, _bucket_field("live", le), count)
        if latencies:
            pipe.hincrbyfloat(key, "live:sum", sum(max(v, 0.0) for v in latencies))
            pipe.hincrby(key, "live:count", len(latencies))
        pipe.execute()


def count_status(pipe: Redis | Pipeline, key: str, status: str) -> None:
    """Count one job entering `status`."""
    pipe.hincrby(key, f"jobs:{status}", 1)


EVENT_STATUSES: dict[str, str] = {
    "queued": "queued",
    "started": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
}
"""The status each job event (service.queue) enters, for the events that count one."""


def count_event(pipe: Redis | Pipeline, key: str, event: str) -> None:
    """Count a job event: the status it enters, if it enters one (a requeue, progress or stall does not)."""
    status = EVENT_STATUSES.get(event)
    if status is not None:
        count_status(pipe, key, status)


def cuda_peak_memory_bytes() -> int | None:
    """torch.cuda.max_memory_allocated() of this process when it runs on CUDA, else None.

    Never imports torch: a process that has not imported it (the gateway, a test double) or has
    not initialised CUDA (a CPU worker) reports None.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


def record_render(
    redis: Redis, key: str, worker: str, *, frames: int, seconds: float, gpu_memory_bytes: int | None
) -> None:
    """A worker finished rendering `frames` in `seconds`: its speed (histogram and gauge) and GPU peak."""
    fps = frames / max(seconds, 1e-6)
    stats = {"fps": round(fps, 4), "gpu_memory_peak_bytes": gpu_memory_bytes, "at": time.time()}
    with redis.pipeline() as pipe:
        if frames > 0:
            observe(pipe, key, "fps", fps)
        pipe.hset(workers_key(key), worker, json.dumps(stats))
        pipe.execute()


def text(reply: bytes | str) -> str:
    """A Redis reply as str. Our clients answer bytes (no decode_responses); redis-py types every
    reply as bytes | str."""
    return reply.decode() if isinstance(reply, bytes) else reply


def live_workers(redis: Redis, queue_names: Sequence[str]) -> list[str]:
    """Names of the RQ workers registered on `queue_names` whose registration is alive."""
    members = (redis.smembers(WORKERS_BY_QUEUE_KEY % name) for name in queue_names)
    keys = sorted({text(member) for registered in members for member in registered})
    if not keys:
        return []
    with redis.pipeline(transaction=False) as pipe:
        for worker_key in keys:
            pipe.exists(worker_key)
            pipe.hexists(worker_key, "death")
        flags = pipe.execute()
    prefix = Worker.redis_worker_namespace_prefix
    return [
        worker_key.removeprefix(prefix)
        for worker_key, exists, dead in zip(keys, flags[::2], flags[1::2], strict=True)
        if exists and not dead
    ]


@dataclass
class _Snapshot:
    """Everything one scrape reads from Redis, read before any metric is rendered."""

    raw: dict[str, str]
    depths: dict[str, int]
    running: int
    workers: list[str] | None = None
    worker_stats: dict[str, dict] = field(default_factory=dict)


class RedisMetricsCollector:
    """A prometheus_client collector reading the shared hashes, the queue lengths and the workers."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        depths: Callable[[], dict[str, int]],
        running: Callable[[], int],
        workers: Callable[[], list[str]] | None = None,
    ) -> None:
        self.redis = redis
        self.key = key
        self.depths = depths
        self.running = running
        self.workers = workers

    @classmethod
    def for_queue(cls, queue: JobQueue) -> RedisMetricsCollector:
        """The collector of a JobQueue's metrics, its queues' depths and its live workers."""
        names = [rq_queue.name for rq_queue in queue.queues.values()]
        return cls(
            queue.redis,
            queue.metrics_key,
            queue.depths,
            queue.running,
            workers=lambda: live_workers(queue.redis, names),
        )

    def describe(self) -> list[Metric]:
        """Nothing up front: the metrics are read from Redis on collect."""
        return []

    def _snapshot(self) -> _Snapshot:
        raw = {text(k): text(v) for k, v in self.redis.hgetall(self.key).items()}
        snapshot = _Snapshot(raw=raw, depths=self.depths(), running=self.running())
        if self.workers is not None:
            snapshot.workers = self.workers()
            stats_key = workers_key(self.key)
            stats = {text(k): v for k, v in self.redis.hgetall(stats_key).items()}
            gone = sorted(set(stats) - set(snapshot.workers))
            if gone:
                self.redis.hdel(stats_key, *gone)
            snapshot.worker_stats = {
                name: json.loads(stats[name]) for name in snapshot.workers if name in stats
            }
        return snapshot

    def collect(self) -> Iterator[Metric]:
        """The metrics, or none at all while Redis is unreachable."""
        try:
            snap = self._snapshot()
        except Exception:  # a scrape must not fail because Redis is down
            return
        raw = snap.raw
        jobs = CounterMetricFamily("liveportrait_jobs", "Jobs that entered each status.", labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], float(raw.get(f"jobs:{status}", 0)))
        yield jobs
        frames = CounterMetricFamily("liveportrait_frames_processed", "Animation frames rendered by workers.")
        frames.add_metric([], float(raw.get("frames", 0)))
        yield frames
        depth = GaugeMetricFamily(
            "liveportrait_queue_depth", "Jobs waiting in each queue.", labels=["priority"]
        )
        for priority in PRIORITIES:
            depth.add_metric([priority], float(snap.depths.get(priority, 0)))
        yield depth
        yield GaugeMetricFamily(
            "liveportrait_jobs_running", "Jobs being executed by workers.", value=snap.running
        )
        yield self._histogram(
            raw, "wait", "liveportrait_job_wait_seconds", "Seconds from submission to an attempt's start."
        )
        yield self._histogram(
            raw, "run", "liveportrait_job_run_seconds", "Seconds from the start of an attempt to its end."
        )
        yield self._histogram(
            raw, "fps", "liveportrait_render_frames_per_second", "Frames per second of each completed render."
        )
        if snap.workers is not None:
            yield from self._worker_metrics(snap)

    @staticmethod
    def _worker_metrics(snap: _Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "liveportrait_workers", "Workers alive on the job queues.", value=len(snap.workers or ())
        )
        fps = GaugeMetricFamily(
            "liveportrait_worker_render_frames_per_second",
            "Frames per second of the worker's latest completed render.",
            labels=["worker"],
        )
        gpu = GaugeMetricFamily(
            "liveportrait_worker_gpu_memory_peak_bytes",
            "torch.cuda.max_memory_allocated() of the worker process (CUDA workers only).",
            labels=["worker"],
        )
        for name, stats in sorted(snap.worker_stats.items()):
            fps.add_metric([name], float(stats.get("fps") or 0.0))
            if stats.get("gpu_memory_peak_bytes") is not None:
                gpu.add_metric([name], float(stats["gpu_memory_peak_bytes"]))
        yield fps
        yield gpu

    @staticmethod
    def _histogram(raw: dict[str, str], name: str, metric: str, doc: str) -> HistogramMetricFamily:
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        edges: Sequence[float] = (*HISTOGRAMS[name], math.inf)
        for le in edges:
            cumulative += float(raw.get(_bucket_field(name, le), 0))
            buckets.append(("+Inf" if le == math.inf else f"{le:g}", cumulative))
        return HistogramMetricFamily(
            metric, doc, buckets=buckets, sum_value=float(raw.get(f"{name}:sum", 0.0))
        )


class LiveMetricsCollector:
    """The live-session metrics: the capacity of the live workers alive (read from their advertisements
    by `capacity`, a service.live.LiveRegistry's) and the counters and latency histogram they add to the
    shared hash."""

    def __init__(self, redis: Redis, key: str, capacity: Callable[[], LiveCapacity]) -> None:
        self.redis = redis
        self.key = key
        self.capacity = capacity

    def describe(self) -> list[Metric]:
        """Nothing up front: the metrics are read from Redis on collect."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metrics, or none at all while Redis is unreachable."""
        try:
            capacity = self.capacity()
            raw = {text(k): text(v) for k, v in self.redis.hgetall(self.key).items()}
        except Exception:  # a scrape must not fail because Redis is down
            return
        yield GaugeMetricFamily("liveportrait_live_workers", "Live workers alive.", value=capacity.workers)
        yield GaugeMetricFamily(
            "liveportrait_live_slots", "Live slots of the live workers alive.", value=capacity.slots
        )
        yield GaugeMetricFamily(
            "liveportrait_live_sessions_active", "Live sessions running on workers.", value=capacity.active
        )
        for name, field_name, doc in (
            ("liveportrait_live_sessions", "live:sessions", "Live sessions started on workers."),
            ("liveportrait_live_frames_received", "live:frames_in", "Driving frames received by sessions."),
            ("liveportrait_live_frames_sent", "live:frames_out", "Animated frames sent by live sessions."),
            (
                "liveportrait_live_frames_dropped",
                "live:dropped",
                "Frames dropped by live sessions (superseded driving frames, answers to slow clients).",
            ),
        ):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], float(raw.get(field_name, 0)))
            yield counter
        yield RedisMetricsCollector._histogram(
            raw,
            "live",
            "liveportrait_live_frame_latency_seconds",
            "Seconds from a driving frame's arrival on the worker to its answer being queued.",
        )
