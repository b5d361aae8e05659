"""LocalStore and S3Store (moto in server mode) behind the one Store interface."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from service.storage import LocalStore, ObjectNotFound, S3Store, StorageError, Store, check_key, make_store

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Store:
    """Each test runs against both stores."""
    if request.param == "local":
        return make_store(make_settings())
    bucket = request.getfixturevalue("s3_bucket")
    return make_store(make_settings(storage_backend="s3", s3_bucket=bucket, s3_prefix="svc"))


def test_roundtrip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(PNG)
    store.put("inputs/a/source.png", src, content_type="image/png")
    store.put("inputs/a/driving.bin", io.BytesIO(b"xyz"))
    assert store.exists("inputs/a/source.png") and not store.exists("inputs/a/nothing")
    assert store.size("inputs/a/source.png") == len(PNG)
    assert store.read_head("inputs/a/source.png", 8) == PNG[:8]
    stream = store.open("inputs/a/driving.bin")
    assert stream.read() == b"xyz"
    stream.close()
    assert store.get("inputs/a/source.png", tmp_path / "out.png").read_bytes() == PNG
    assert store.delete_prefix("inputs/a/") == 2
    assert not store.exists("inputs/a/source.png")
    store.delete("inputs/a/source.png")
    with pytest.raises(ObjectNotFound):
        store.size("inputs/a/source.png")
    with pytest.raises(ObjectNotFound):
        store.open("inputs/a/source.png")
    store.check()


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b", "a/../b", "a/./b", "sp ace", ""])
def test_keys_cannot_escape(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check_key(key)
    with pytest.raises(ValueError):
        LocalStore(tmp_path).put(key, io.BytesIO(b"x"))


def test_local_store_has_no_presigned_urls(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert store.presigned_get("results/x/output.mp4", expires_s=60) is None
    assert store.presigned_post("uploads/x", max_bytes=10, expires_s=60) is None


def test_s3_presigned_get_and_post(make_settings: Callable[..., Settings], s3_bucket: str) -> None:
    store = make_store(make_settings(storage_backend="s3", s3_bucket=s3_bucket))
    store.put("results/j/output.mp4", io.BytesIO(b"video bytes"), content_type="video/mp4")
    url = store.presigned_get(
        "results/j/output.mp4", expires_s=60, filename="clip.mp4", content_type="video/mp4"
    )
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"video bytes"
    assert 'filename="clip.mp4"' in response.headers["content-disposition"]
    post = store.presigned_post("uploads/u1", max_bytes=1000, expires_s=60)
    assert post is not None and post.fields["key"] == "uploads/u1"
    sent = httpx.post(post.url, data=post.fields, files={"file": ("a.png", PNG)})
    assert sent.status_code in (200, 204), sent.text
    assert store.read_head("uploads/u1", 8) == PNG[:8]


def test_s3_large_files_go_up_in_parts(
    make_settings: Callable[..., Settings], s3_bucket: str, tmp_path: Path
) -> None:
    chunk = 5 * 1024 * 1024
    settings = make_settings(
        storage_backend="s3",
        s3_bucket=s3_bucket,
        s3_multipart_threshold_bytes=chunk,
        s3_multipart_chunk_bytes=chunk,
    )
    store = S3Store(settings)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x01" * (2 * chunk + 123))
    store.put("results/big/output.mp4", big)
    head = store.client.head_object(Bucket=s3_bucket, Key="results/big/output.mp4")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]
    assert store.get("results/big/output.mp4", tmp_path / "back.bin").stat().st_size == 2 * chunk + 123


def test_s3_check_fails_without_the_bucket(make_settings: Callable[..., Settings]) -> None:
    store = make_store(make_settings(storage_backend="s3", s3_bucket="no-such-bucket-here"))
    with pytest.raises(StorageError):
        store.check()
