"""Expression-edit jobs at the gateway (uvicorn, real Redis, local store): what is queued, what is 422."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.queue import JobQueue, connect
from service.settings import Settings
from tests.worker.doubles import write_inputs


@dataclass
class Gw:
    url: str
    queue: JobQueue
    face: bytes
    driving: bytes

    def post(self, data: dict[str, Any], *, driving: bool = False) -> httpx.Response:
        """A multipart submission of the face (and the driving video), JSON-encoding `data`'s values."""
        files = {"source": ("face.png", self.face)}
        if driving:
            files["driving"] = ("driving.mp4", self.driving)
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
        return httpx.post(f"{self.url}/v1/jobs", files=files, data=fields, timeout=10)

    def payload(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 202, response.text
        record = self.queue.get(response.json()["id"])
        assert record is not None
        return record.payload


@pytest.fixture
def gw(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str], tmp_path: Path
) -> Gw:
    settings = make_settings(max_driving_frames=100)
    face, driving = (path.read_bytes() for path in write_inputs(tmp_path))
    return Gw(gateway_server(settings), JobQueue(connect(settings), settings), face, driving)


def test_the_three_edit_jobs_are_queued_with_their_controls(gw: Gw) -> None:
    still = gw.payload(gw.post({"expression": {"smile": 0.8, "yaw": 10, "aaa": 30}}))
    assert still["driving"] is None and still["keyframes"] is None
    assert (still["expression"]["smile"], still["expression"]["aaa"]) == (0.8, 30.0)

    keyframes = [{"expression": {"smile": 1}, "change": 5, "keep": 2}, {"change": 3}]
    video = gw.payload(gw.post({"keyframes": keyframes, "options": {"output_fps": 12}}))
    assert video["driving"] is None and video["expression"] is None
    assert [(k["change"], k["keep"]) for k in video["keyframes"]] == [(5, 2), (3, 0)]
    assert video["options"]["output_fps"] == 12

    offsets = gw.payload(gw.post({"expression": {"eyebrow": -5}}, driving=True))
    assert offsets["driving"] is not None and offsets["expression"]["eyebrow"] == -5.0


def test_json_jobs_take_the_same_controls(gw: Gw) -> None:
    upload = httpx.post(f"{gw.url}/v1/uploads", json={"size_bytes": len(gw.face)}, timeout=10).json()
    sent = httpx.post(upload["url"], data=upload["fields"], files={"file": ("face.png", gw.face)}, timeout=10)
    assert sent.status_code == 204, sent.text
    body = {"source": {"upload_id": upload["upload_id"]}, "expression": {"pupil_x": 5, "blink": -3}}
    queued = gw.payload(httpx.post(f"{gw.url}/v1/jobs", json=body, timeout=10))
    assert queued["expression"] == {**queued["expression"], "pupil_x": 5.0, "blink": -3.0}
    body["expression"] = {"smirk": 1}
    refused = httpx.post(f"{gw.url}/v1/jobs", json=body, timeout=10)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["loc"] == ["body", "expression", "smirk"]


@pytest.mark.parametrize(
    ("data", "driving", "loc", "kind"),
    [
        ({"expression": {"grimace": 1}}, False, ["body", "expression", "grimace"], "extra_forbidden"),
        ({"expression": {"smile": 1.5}}, False, ["body", "expression", "smile"], "less_than_equal"),
        ({"expression": {"yaw": -30}}, False, ["body", "expression", "yaw"], "greater_than_equal"),
        ({"expression": {"smile": "NaN"}}, False, ["body", "expression", "smile"], "finite_number"),
        ({"expression": {"woo": 1, "lip_variation_one": 2}}, False, ["body", "expression"], "value_error"),
        ({"keyframes": [{"expression": {"wink": 50}, "change": 2}]}, False, None, "less_than_equal"),
        ({"keyframes": [{"change": 0}]}, False, ["body", "keyframes"], "value_error"),
        ({"keyframes": [{"keep": 101}]}, False, ["body", "keyframes"], "too_long"),
        ({"keyframes": [{"keep": 2}]}, True, ["body"], "value_error"),
        ({}, False, ["body"], "value_error"),
        ({"expression": {"smile": 1}, "keyframes": [{"keep": 2}]}, False, ["body"], "value_error"),
    ],
)
def test_refused_controls_are_422(
    gw: Gw, data: dict[str, Any], driving: bool, loc: list[str] | None, kind: str
) -> None:
    response = gw.post(data, driving=driving)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["type"] == kind, error
    if loc is not None:
        assert error["loc"] == loc, error
