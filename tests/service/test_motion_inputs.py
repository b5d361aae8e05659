"""Motion templates as driving inputs at the gateway: accepted when they are ours and within the limits,
refused by their bytes (with a clear code) otherwise; motion jobs' shape. Real HTTP, Redis, local store."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from common.media import MOTION_TEMPLATE, MediaError, MediaLimits, inspect_media
from engines.motion.template import save_template
from service.queue import JobQueue, connect
from service.settings import Settings
from tests.service.test_gateway import KEY, LIMIT, Gw, digest
from tests.service.test_problems import assert_problem
from tests.templates import random_template
from tests.worker.doubles import write_inputs

MAX_FRAMES = 10

LIMITS = MediaLimits(
    max_image_pixels=4096 * 4096, max_video_pixels=1920 * 1080, max_frames=50, max_seconds=60
)


def template_bytes(tmp_path: Path, frames: int = 4, **arrays: np.ndarray) -> bytes:
    """A template of `frames` frames as `liveportrait motion extract` writes it (arrays overridable)."""
    path = tmp_path / f"t{frames}.npz"
    save_template(path, random_template(frames, fps=25.0))
    if not arrays:
        return path.read_bytes()
    rewritten = io.BytesIO()
    with zipfile.ZipFile(path) as original, zipfile.ZipFile(rewritten, "w") as out:
        for name in original.namelist():
            key = name.removesuffix(".npy")
            if key in arrays:
                entry = io.BytesIO()
                np.save(entry, arrays[key], allow_pickle=True)
                out.writestr(name, entry.getvalue())
            else:
                out.writestr(name, original.read(name))
    return rewritten.getvalue()


def inspect(data: bytes) -> str:
    """The media type inspect_media gives a driving input, or the code of its refusal."""
    try:
        return inspect_media(io.BytesIO(data), len(data), LIMITS, motion_templates=True).content_type
    except MediaError as exc:
        return exc.code


@pytest.fixture
def gw(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str], tmp_path: Path
) -> Gw:
    """A gateway with an API key, the local store and driving inputs of at most MAX_FRAMES frames."""
    settings = make_settings(
        api_keys=[digest(KEY)],
        max_request_bytes=LIMIT,
        max_input_bytes=LIMIT // 2,
        max_driving_frames=MAX_FRAMES,
    )
    face, driving = (path.read_bytes() for path in write_inputs(tmp_path))
    return Gw(gateway_server(settings), settings, JobQueue(connect(settings), settings), face, driving)


def test_the_checker_reads_templates_by_their_bytes(tmp_path: Path) -> None:
    good = template_bytes(tmp_path)
    assert inspect(good) == MOTION_TEMPLATE
    info = inspect_media(io.BytesIO(good), len(good), LIMITS, motion_templates=True)
    assert (info.frames, info.seconds) == (4, 4 / 25)
    with pytest.raises(MediaError) as as_source:  # a template is no source: only a driving input
        inspect_media(io.BytesIO(good), len(good), LIMITS)
    assert as_source.value.code == "unsupported_media"

    assert inspect(pickle.dumps({"motion": [1, 2]})) == "bad_template"
    assert inspect(template_bytes(tmp_path, exp=np.zeros((4, 20, 3), np.float32))) == "bad_template"
    assert inspect(template_bytes(tmp_path, exp=np.zeros((4, 21, 3), np.float64))) == "bad_template"
    objects = np.empty((4, 21, 3), dtype=object)
    assert inspect(template_bytes(tmp_path, exp=objects)) == "bad_template"
    assert inspect(template_bytes(tmp_path, frames=51)) == "too_long"

    other_zip = io.BytesIO()
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert inspect(other_zip.getvalue()) == "bad_template"
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("liveportrait_meta.npy", b"\0" * (64 * 1024 * 1024))
    assert inspect(bomb.getvalue()) == "too_large"
    truncated = good[: len(good) // 2]
    assert inspect(truncated) == "bad_template"
    meta = json.dumps({"format": "liveportrait-motion", "version": 2, "fps": 25, "n_frames": 4})
    assert inspect(good.replace(b'"version": 1', b'"version": 2')) == "bad_template", meta


def test_the_gateway_takes_templates_as_driving_inputs(gw: Gw, tmp_path: Path) -> None:
    good = template_bytes(tmp_path)
    with gw.client() as client:
        files = {"source": ("face.png", gw.face), "driving": ("motion.npz", good)}
        accepted = client.post("/v1/jobs", files=files)
        assert accepted.status_code == 202, accepted.text
        record = gw.queue.get(accepted.json()["id"])
        assert record is not None and record.payload["driving"]["content_type"] == MOTION_TEMPLATE
        assert record.payload["driving"]["key"].endswith("/driving.npz")

        grant = client.post("/v1/uploads").json()
        sent = client.post(grant["url"], data=grant["fields"], files={"file": ("m.npz", good)})
        assert sent.status_code == 204, sent.text
        source = client.post("/v1/uploads").json()
        client.post(source["url"], data=source["fields"], files={"file": ("f.png", gw.face)})
        body = {"source": {"upload_id": source["upload_id"]}, "driving": {"upload_id": grant["upload_id"]}}
        assert client.post("/v1/jobs", json=body).status_code == 202

        refusals = {
            "pickle": (pickle.dumps({"motion": []}), "bad_template"),
            "shapes": (template_bytes(tmp_path, R=np.zeros((4, 2, 2), np.float32)), "bad_template"),
            "frames": (template_bytes(tmp_path, frames=MAX_FRAMES + 1), "too_long"),
        }
        for case, (data, code) in refusals.items():
            files = {"source": ("face.png", gw.face), "driving": ("motion.npz", data)}
            problem = assert_problem(client.post("/v1/jobs", files=files), 422, code)
            assert problem.errors is not None and problem.errors[0].loc == ["body", "driving"], case
        as_source = client.post(
            "/v1/jobs", files={"source": ("m.npz", good), "driving": ("d.mp4", gw.driving)}
        )
        assert_problem(as_source, 415, "unsupported_media")


def test_motion_jobs_take_a_driving_video_alone(gw: Gw, tmp_path: Path) -> None:
    motion = {"output": json.dumps({"kind": "motion"})}
    with gw.client() as client:
        job = client.post("/v1/jobs", files={"driving": ("d.mp4", gw.driving)}, data=motion)
        assert job.status_code == 202, job.text
        record = gw.queue.get(job.json()["id"])
        assert record is not None and record.payload["source"] is None
        assert record.payload["output"]["kind"] == "motion"
        with_source = client.post("/v1/jobs", files=gw.files(), data=motion)
        assert "'driving' video alone" in assert_problem(with_source, 422, "invalid_request").detail
        template = {"driving": ("m.npz", template_bytes(tmp_path))}
        assert_problem(client.post("/v1/jobs", files=template, data=motion), 422, "unsupported_input")
        no_source = client.post("/v1/jobs", files={"driving": ("d.mp4", gw.driving)})
        assert "'source' is required" in assert_problem(no_source, 422, "invalid_request").detail
