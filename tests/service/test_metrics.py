"""Prometheus metrics kept in Redis: a job through the gateway (uvicorn) and a worker thread running
the engine's test double (FakeAnimator, which writes a real H.264 MP4 with PyAV), then /metrics.

Also: counters never decrease, histogram buckets stay consistent under concurrent writers, no
per-job labels, per-worker gauges only for live workers, and the gateway never imports torch.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.client import Client
from service.metrics import HISTOGRAMS, RedisMetricsCollector
from service.queue import JobQueue, connect
from service.settings import Settings
from tests.worker.doubles import FakeAnimator, fake_engine, running_worker, write_inputs

REPO = Path(__file__).resolve().parents[2]
FRAMES = 8
HISTOGRAM_NAMES = {
    "wait": "liveportrait_job_wait_seconds",
    "run": "liveportrait_job_run_seconds",
    "fps": "liveportrait_render_frames_per_second",
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples keyed by (sample name, sorted labels), and the type of each metric family."""
    samples: Samples = {}
    types_: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types_[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types_


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """GET /metrics of a gateway, parsed."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def assert_histograms_consistent(samples: Samples) -> None:
    """Each histogram: exactly its declared buckets, cumulative, +Inf equal to _count, sum >= 0."""
    for key, metric in HISTOGRAM_NAMES.items():
        buckets = sorted(
            (math.inf if dict(labels)["le"] == "+Inf" else float(dict(labels)["le"]), count)
            for (name, labels), count in samples.items()
            if name == f"{metric}_bucket"
        )
        assert [le for le, _ in buckets] == [*HISTOGRAMS[key], math.inf], metric
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), f"{metric} buckets are not cumulative: {counts}"
        assert counts[-1] == value(samples, f"{metric}_count"), metric
        assert value(samples, f"{metric}_sum") >= 0.0


def assert_counters_grew(before: Samples, after: Samples, types_: dict[str, str]) -> None:
    """No counter or histogram sample went down between two scrapes."""
    monotonic = {name for name, kind in types_.items() if kind in ("counter", "histogram")}
    for (name, labels), old in before.items():
        family = name.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
        family = family.removesuffix("_sum")
        if family in monotonic:
            assert after.get((name, labels), 0.0) >= old, (name, labels)


def test_a_job_is_counted_timed_and_its_frames_counted(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str], tmp_path: Path
) -> None:
    settings = make_settings()
    url = gateway_server(settings)
    source, driving = write_inputs(tmp_path, FRAMES)
    engine = fake_engine(FakeAnimator(frame_delay=0.02))
    with running_worker(settings, engine) as worker, Client(url) as client:
        before, types_ = scrape(url)
        job = client.wait(client.submit(source, driving).id, timeout=60, poll_s=0.05)
        after, types_ = scrape(url)
    assert job.status == "succeeded" and job.started_at and job.finished_at

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for status, grew in (("queued", 1), ("running", 1), ("succeeded", 1), ("failed", 0), ("canceled", 0)):
        assert delta("liveportrait_jobs_total", status=status) == grew, status
    assert delta("liveportrait_job_run_seconds_count") == 1.0
    assert delta("liveportrait_job_wait_seconds_count") == 1.0
    assert delta("liveportrait_render_frames_per_second_count") == 1.0
    run_seconds = (job.finished_at - job.started_at).total_seconds()
    assert delta("liveportrait_job_run_seconds_sum") == pytest.approx(run_seconds, abs=0.01)
    assert run_seconds >= FRAMES * 0.02
    assert delta("liveportrait_frames_processed_total") == FRAMES
    for priority in ("high", "default", "low"):
        assert value(after, "liveportrait_queue_depth", priority=priority) == 0.0
    assert value(after, "liveportrait_jobs_running") == 0.0
    assert value(after, "liveportrait_workers") == 1.0
    fps = value(after, "liveportrait_worker_render_frames_per_second", worker=worker.name)
    assert 0 < fps <= FRAMES / (FRAMES * 0.02)
    gpu = ("liveportrait_worker_gpu_memory_peak_bytes", (("worker", worker.name),))
    assert (gpu in after) == (metrics.cuda_peak_memory_bytes() is not None)
    assert_histograms_consistent(before)
    assert_histograms_consistent(after)
    assert_counters_grew(before, after, types_)
    text = httpx.get(f"{url}/metrics").text
    assert job.id not in text, "no per-job labels"
    labels = {label for _, sample_labels in after for label, _ in sample_labels}
    assert labels <= {"status", "priority", "worker", "le"}

    gone, _ = scrape(url)  # the worker stopped: no per-worker gauges, its stats forgotten
    assert value(gone, "liveportrait_workers") == 0.0
    assert not [key for key in gone if ("worker", worker.name) in key[1]]
    queue = JobQueue(connect(settings), settings)
    assert not queue.redis.hexists(metrics.workers_key(queue.metrics_key), worker.name)


def test_histograms_stay_consistent_under_concurrent_writers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    queue = JobQueue(connect(settings), settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisMetricsCollector.for_queue(queue))
    writers, per_writer = 4, 150
    done = threading.Event()

    def write(seed: int) -> None:
        client = connect(settings)
        for i in range(per_writer):
            with client.pipeline() as pipe:
                metrics.observe(pipe, queue.metrics_key, "run", (seed * 37 + i * 13) % 4000)
                metrics.count_status(pipe, queue.metrics_key, "succeeded")
                pipe.execute()
        client.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    scrapes: list[Samples] = []

    def watch() -> None:
        while not done.is_set():
            scrapes.append(parse(generate_latest(registry).decode())[0])

    watcher = threading.Thread(target=watch)
    watcher.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    scrapes.append(parse(generate_latest(registry).decode())[0])
    assert len(scrapes) > 2
    for earlier, later in pairwise(scrapes):
        assert_histograms_consistent(later)
        for name in ("liveportrait_job_run_seconds_count", "liveportrait_job_run_seconds_sum"):
            assert value(later, name) >= value(earlier, name)
        # each observation and its status count are one transaction
        assert value(later, "liveportrait_job_run_seconds_count") == value(
            later, "liveportrait_jobs_total", status="succeeded"
        )
    assert value(scrapes[-1], "liveportrait_job_run_seconds_count") == writers * per_writer


def test_render_stats_and_gpu_probe(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    queue = JobQueue(connect(settings), settings)
    key = queue.metrics_key
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert metrics.cuda_peak_memory_bytes() is None
    cuda = types.SimpleNamespace(is_initialized=lambda: False, max_memory_allocated=lambda: 123)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert metrics.cuda_peak_memory_bytes() is None, "CPU worker: CUDA never initialised"
    cuda.is_initialized = lambda: True
    assert metrics.cuda_peak_memory_bytes() == 123
    metrics.record_render(queue.redis, key, "w1", frames=50, seconds=2.0, gpu_memory_bytes=123)
    metrics.record_render(queue.redis, key, "w2", frames=0, seconds=0.0, gpu_memory_bytes=None)
    alive = {"w1", "w2"}
    collector = RedisMetricsCollector(
        queue.redis, key, queue.depths, queue.running, workers=lambda: sorted(alive)
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    samples, _ = parse(generate_latest(registry).decode())
    assert value(samples, "liveportrait_worker_render_frames_per_second", worker="w1") == 25.0
    assert value(samples, "liveportrait_worker_gpu_memory_peak_bytes", worker="w1") == 123.0
    assert ("liveportrait_worker_gpu_memory_peak_bytes", (("worker", "w2"),)) not in samples
    assert value(samples, "liveportrait_render_frames_per_second_count") == 1.0, "no speed of 0 frames"
    assert value(samples, "liveportrait_render_frames_per_second_bucket", le="32") == 1.0
    assert value(samples, "liveportrait_render_frames_per_second_bucket", le="24") == 0.0
    assert value(samples, "liveportrait_workers") == 2.0
    alive.discard("w1")
    samples, _ = parse(generate_latest(registry).decode())
    assert ("liveportrait_worker_render_frames_per_second", (("worker", "w1"),)) not in samples
    assert set(queue.redis.hkeys(metrics.workers_key(key))) == {b"w2"}
    entry = queue.redis.hget(metrics.workers_key(key), "w2")
    assert entry is not None and json.loads(entry)["gpu_memory_peak_bytes"] is None


def test_gateway_never_imports_torch(make_settings: Callable[..., Settings]) -> None:
    code = (
        "import sys\n"
        "from service.gateway.app import create_app\n"
        "from service.settings import Settings\n"
        "app = create_app(Settings(redis_url=sys.argv[1]))\n"
        "from prometheus_client import generate_latest\n"
        "generate_latest(app.state.gateway.registry)\n"
        "assert 'torch' not in sys.modules, 'the gateway imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code, make_settings().redis_url], cwd=REPO, check=True, timeout=120)
