"""Job metrics kept in Redis, so every worker and gateway contributes to one set of numbers.

Workers and gateways increment counters and histogram buckets in one Redis hash; the gateway's
/metrics renders them (plus live queue depths) in the Prometheus text format at scrape time.
Metric names carry no per-job labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis import Redis
from redis.client import Pipeline

from service.contract import PRIORITIES

WAIT_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
HISTOGRAMS: dict[str, tuple[float, ...]] = {"wait": WAIT_BUCKETS, "run": RUN_BUCKETS}
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "canceled")


def _bucket_field(name: str, le: float) -> str:
    return f"{name}:le:{le:g}"


def observe(pipe: Redis | Pipeline, key: str, name: str, seconds: float) -> None:
    """Add one observation to histogram `name` (one bucket field, plus sum and count)."""
    buckets = HISTOGRAMS[name]
    le = next((b for b in buckets if seconds <= b), math.inf)
    pipe.hincrby(key, _bucket_field(name, le), 1)
    pipe.hincrbyfloat(key, f"{name}:sum", max(seconds, 0.0))
    pipe.hincrby(key, f"{name}:count", 1)


def count_status(pipe: Redis | Pipeline, key: str, status: str) -> None:
    """Count one job entering `status`."""
    pipe.hincrby(key, f"jobs:{status}", 1)


class RedisMetricsCollector:
    """A prometheus_client collector reading the shared hash and the queue lengths."""

    def __init__(
        self, redis: Redis, key: str, depths: Callable[[], dict[str, int]], running: Callable[[], int]
    ):
        self.redis = redis
        self.key = key
        self.depths = depths
        self.running = running

    def describe(self) -> list[Metric]:
        """Nothing up front: the metrics are read from Redis on collect."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metrics, or none at all while Redis is unreachable."""
        try:
            raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key).items()}
            depths = self.depths()
            running = self.running()
        except Exception:  # a scrape must not fail because Redis is down
            return
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
            depth.add_metric([priority], float(depths.get(priority, 0)))
        yield depth
        yield GaugeMetricFamily("liveportrait_jobs_running", "Jobs being executed by workers.", value=running)
        yield self._histogram(
            raw, "wait", "liveportrait_job_wait_seconds", "Seconds from submission to start."
        )
        yield self._histogram(raw, "run", "liveportrait_job_run_seconds", "Seconds from start to the end.")

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
