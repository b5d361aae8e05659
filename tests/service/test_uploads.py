"""The uploads service (service.gateway.services.uploads) without HTTP: grants and direct uploads."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.gateway import create_app
from service.gateway.services import FilePart, Forbidden, InvalidRequest, NotFound, TooLarge, UnsupportedMedia
from service.gateway.services import uploads as upload_service
from service.gateway.state import Gateway
from service.settings import Settings
from tests.worker.doubles import face_image, write_png

LIMIT = 64 * 1024
BASE = "https://gw.example"


@pytest.fixture
def gateway(make_settings: Callable[..., Settings]) -> Iterator[Gateway]:
    """The app's Gateway on the local store."""
    gateway = create_app(make_settings(max_input_bytes=LIMIT)).state.gateway
    yield gateway
    gateway.redis.close()


@pytest.fixture
def face(tmp_path: Path) -> bytes:
    """A small PNG face photo."""
    return write_png(tmp_path / "face.png", face_image(64)).read_bytes()


def part(data: bytes) -> FilePart:
    """A spooled form file holding `data`."""
    return FilePart(io.BytesIO(data), len(data))


def test_grant_then_receive(gateway: Gateway, face: bytes) -> None:
    grant = upload_service.grant(gateway, BASE)
    assert grant.url == f"{BASE}/v1/uploads/{grant.upload_id}" and grant.max_bytes == LIMIT
    assert set(grant.fields) == {"expires", "max_bytes", "signature"}
    upload_service.receive(gateway, grant.upload_id, {**grant.fields, "file": part(face)})
    assert gateway.store.size(f"uploads/{grant.upload_id}") == len(face)
    with pytest.raises(InvalidRequest, match=f"at most {LIMIT} bytes") as refused:
        upload_service.grant(gateway, BASE, size_bytes=LIMIT + 1)
    assert refused.value.code == "too_large"


def test_receive_refuses_forged_grants_and_bad_files(gateway: Gateway, face: bytes) -> None:
    grant = upload_service.grant(gateway, BASE)
    other = upload_service.grant(gateway, BASE)
    refusals: list[tuple[str, dict[str, str | FilePart], type[Exception], str]] = [
        (grant.upload_id, {"file": part(face)}, Forbidden, "malformed signed fields"),
        (
            grant.upload_id,
            {**grant.fields, "max_bytes": str(10 * LIMIT), "file": part(face)},
            Forbidden,
            "invalid",
        ),
        (other.upload_id, {**grant.fields, "file": part(face)}, Forbidden, "invalid"),
        (grant.upload_id, {**grant.fields, "file": "text"}, InvalidRequest, "must be a file"),
        (grant.upload_id, {**grant.fields, "file": part(face + b"\0" * LIMIT)}, TooLarge, "at most"),
        (grant.upload_id, {**grant.fields, "file": part(b"MZ" * 100)}, UnsupportedMedia, "not an image"),
    ]
    for upload_id, fields, refusal, fragment in refusals:
        with pytest.raises(refusal, match=fragment):
            upload_service.receive(gateway, upload_id, fields)
    with pytest.raises(InvalidRequest) as truncated:
        upload_service.receive(gateway, grant.upload_id, {**grant.fields, "file": part(face[:100])})
    detail = truncated.value.detail
    assert isinstance(detail, list) and [(e["loc"], e["type"]) for e in detail] == [
        (["body", "file"], "corrupt_media")
    ]
    assert not gateway.store.exists(f"uploads/{grant.upload_id}")


def test_s3_gateways_take_no_direct_uploads(make_settings: Callable[..., Settings], s3_bucket: str) -> None:
    gateway = create_app(make_settings(storage_backend="s3", s3_bucket=s3_bucket)).state.gateway
    try:
        grant = upload_service.grant(gateway, BASE)
        assert not grant.url.startswith(BASE) and "signature" not in grant.fields
        with pytest.raises(NotFound, match="presigned form"):
            upload_service.require_direct_uploads(gateway)
    finally:
        gateway.redis.close()
