"""W3C trace context: parsing, and one trace from the client's `traceparent` through the gateway
(uvicorn, JSON logs) and the job payload to the worker's log lines and the job status.

The worker is a thread running the engine's test double (FakeAnimator: real PyAV decode and H.264
encode, no animation).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import structlog

from service.logs import configure_logging
from service.queue import JobQueue, connect
from service.settings import Settings
from service.tracing import TraceContext, job_log_fields, parse_traceparent, trace_id_of
from tests.waiting import wait_until
from tests.worker.doubles import fake_engine, running_worker, write_inputs

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEADER = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (HEADER, (TRACE, PARENT, "01")),
        (f"  {HEADER}\t", (TRACE, PARENT, "01")),
        (f"00-{TRACE}-{PARENT}-00", (TRACE, PARENT, "00")),
        (f"01-{TRACE}-{PARENT}-01-extra", (TRACE, PARENT, "01")),  # a later version may add fields
        (f"01-{TRACE}-{PARENT}-01", (TRACE, PARENT, "01")),
        (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 is exactly 55 characters
        (f"01-{TRACE}-{PARENT}-01x", None),
        (f"ff-{TRACE}-{PARENT}-01", None),
        (f"00-{TRACE.upper()}-{PARENT}-01", None),
        (f"00-{'0' * 32}-{PARENT}-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE[:-1]}-{PARENT}-01", None),
        ("00-xyz", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_traceparent(value: str | None, expected: tuple[str, str, str] | None) -> None:
    context = parse_traceparent(value)
    assert (None if context is None else (context.trace_id, context.span_id, context.flags)) == expected


def test_contexts_children_and_log_fields() -> None:
    started = TraceContext.start()
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", started.traceparent)
    child = started.child()
    assert child.trace_id == started.trace_id and child.span_id != started.span_id
    assert parse_traceparent(child.traceparent) == child
    fields = job_log_fields(HEADER)
    assert (fields["trace_id"], fields["parent_span_id"]) == (TRACE, PARENT)
    assert re.fullmatch(r"[0-9a-f]{16}", fields["span_id"]) and fields["span_id"] != PARENT
    assert job_log_fields(None) == {} and job_log_fields("garbage") == {}
    assert trace_id_of(HEADER) == TRACE and trace_id_of(None) is None


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The service's JSON logging, written to a buffer for this test; restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging(Settings(log_json=True, log_level="INFO"), stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def wait_done(http: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    """Poll a job until it ends; its final JSON."""

    def ended() -> dict | None:
        job = http.get(f"/v1/jobs/{job_id}").json()
        return None if job["status"] in ("queued", "running") else job

    return wait_until(ended, timeout, f"job {job_id} to end")


@pytest.mark.e2e
def test_e2e_traceparent_reaches_worker_logs_and_status(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    json_logs: io.StringIO,
    tmp_path: Path,
) -> None:
    settings = make_settings()
    url = gateway_server(settings)
    source, driving = write_inputs(tmp_path, 4)
    files = {"source": ("face.png", source.read_bytes()), "driving": ("driving.mp4", driving.read_bytes())}
    with running_worker(settings, fake_engine()), httpx.Client(base_url=url, timeout=10) as http:
        traced = http.post("/v1/jobs", files=files, headers={"traceparent": HEADER, "X-Request-ID": "req-1"})
        fresh = http.post("/v1/jobs", files=files)
        invalid = http.post("/v1/jobs", files=files, headers={"traceparent": f"ff-{TRACE}-{PARENT}-01"})
        finals = {}
        for response in (traced, fresh, invalid):
            assert response.status_code == 202, response.text
            finals[response.json()["id"]] = wait_done(http, response.json()["id"])
        not_found = http.get("/v1/jobs/" + "0" * 32, headers={"traceparent": HEADER})
    assert [job["status"] for job in finals.values()] == ["succeeded"] * 3, finals
    gateway_span = parse_traceparent(traced.headers["traceresponse"])
    assert gateway_span is not None and gateway_span.trace_id == TRACE and gateway_span.span_id != PARENT
    assert traced.json()["trace_id"] == finals[traced.json()["id"]]["trace_id"] == TRACE
    for response in (fresh, invalid):
        trace_id = response.json()["trace_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != TRACE
        assert trace_id_of(response.headers["traceresponse"]) == trace_id
    assert fresh.json()["trace_id"] != invalid.json()["trace_id"]
    assert not_found.status_code == 404 and trace_id_of(not_found.headers["traceresponse"]) == TRACE
    record = JobQueue(connect(settings), settings).get(traced.json()["id"])
    assert record is not None and record.payload["traceparent"] == traced.headers["traceresponse"]

    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    submitted = [line for line in lines if line["event"] == "job.submitted"]
    assert [(line["job_id"], line["trace_id"]) for line in submitted] == [
        (r.json()["id"], r.json()["trace_id"]) for r in (traced, fresh, invalid)
    ]
    assert submitted[0]["request_id"] == "req-1" and submitted[0]["parent_span_id"] == PARENT
    for response in (traced, fresh, invalid):
        job_lines = [line for line in lines if line.get("job_id") == response.json()["id"]]
        worker_lines = [line for line in job_lines if line["logger"] == "worker"]
        assert {"job.started", "job.succeeded"} <= {line["event"] for line in worker_lines}
        assert {line["trace_id"] for line in job_lines} == {response.json()["trace_id"]}
        gateway = parse_traceparent(response.headers["traceresponse"])
        spans = {line["span_id"] for line in worker_lines}
        assert gateway is not None and len(spans) == 1 and gateway.span_id not in spans
        assert {line["parent_span_id"] for line in worker_lines} == {gateway.span_id}
