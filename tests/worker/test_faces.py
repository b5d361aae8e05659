"""The `faces` option of a job through the service: the gateway (uvicorn, real Redis, local store)
checks its form, 422 otherwise; the worker runs the real engine (synthetic weights, the Haar
detector) and fails a job naming a face the source does not have with `face_not_found`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.demo import group_portrait, head_motion_frames, portrait
from service.client import Client
from service.queue import JobQueue, connect
from service.settings import Settings
from tests.worker.doubles import running_worker, write_png, write_video
from worker.runner import WorkerEngine


@pytest.fixture(scope="module")
def haar_engine(tmp_path_factory: pytest.TempPathFactory) -> WorkerEngine:
    """The worker's engines on synthetic weights with the Haar detector (the job fails before W + G)."""
    from engines.weights import write_synthetic_bundle
    from worker.worker import load_engine

    weights = write_synthetic_bundle(tmp_path_factory.mktemp("weights"), 0)
    return load_engine(Settings(weights_dir=weights, device="cpu", optimize=False, detector="haar-box"))


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A picture of two real faces and a 2-frame driving video."""
    source = write_png(tmp_path / "two.png", group_portrait(2, 256))
    return source, write_video(tmp_path / "driving.mp4", list(head_motion_frames(portrait(), 2)), fps=25)


def test_a_face_the_source_lacks_fails_the_job_with_its_code(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    haar_engine: WorkerEngine,
    inputs: tuple[Path, Path],
) -> None:
    settings = make_settings()
    source, driving = inputs
    with running_worker(settings, haar_engine), Client(gateway_server(settings)) as client:
        job = client.submit(source, driving, options={"faces": [1, 4]})
        failed = client.wait(job.id, timeout=120, poll_s=0.05)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "face_not_found"
    assert (
        failed.error.message
        == "faces names face 4 but the source has 2 faces (indices 0 to 1, left to right)"
    )


def post(url: str, source: Path, driving: Path, options: dict[str, Any]) -> httpx.Response:
    files = {"source": ("two.png", source.read_bytes()), "driving": ("driving.mp4", driving.read_bytes())}
    return httpx.post(f"{url}/v1/jobs", files=files, data={"options": json.dumps(options)}, timeout=10)


@pytest.mark.parametrize(
    ("options", "queued"),
    [({"faces": "all"}, "all"), ({"faces": "2,0"}, [0, 2]), ({"faces": [1]}, [1]), ({}, "largest")],
)
def test_the_gateway_queues_the_forms_of_faces(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    inputs: tuple[Path, Path],
    options: dict[str, Any],
    queued: object,
) -> None:
    settings = make_settings()
    response = post(gateway_server(settings), *inputs, options)
    assert response.status_code == 202, response.text
    record = JobQueue(connect(settings), settings).get(response.json()["id"])
    assert record is not None and record.payload["options"]["faces"] == queued


@pytest.mark.parametrize(
    "options",
    [
        {"faces": "left"},
        {"faces": [16]},
        {"faces": [-1]},
        {"faces": []},
        {"faces": "all", "flag_do_crop": False},
        {"min_face_size": 1.0},
    ],
)
def test_the_gateway_refuses_a_malformed_faces_with_422(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    inputs: tuple[Path, Path],
    options: dict[str, Any],
) -> None:
    response = post(gateway_server(make_settings()), *inputs, options)
    assert response.status_code == 422, response.text
