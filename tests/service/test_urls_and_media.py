"""URL input rules and content sniffing."""

from __future__ import annotations

import pickle

import pytest

from service.media import sniff
from service.urls import S3Location, UnsafeURL, check_url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/a.png", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://x/", "scheme"),
        ("http://127.0.0.1/a.png", "private"),
        ("http://localhost:8000/a.png", "private"),
        ("http://10.1.2.3/a.png", "private"),
        ("http://169.254.169.254/latest/meta-data", "private"),
        ("http://[::1]/a.png", "private"),
        ("http://[::ffff:127.0.0.1]/a.png", "private"),
        ("http://user:pw@93.184.216.34/a.png", "credentials"),
        ("s3://other-bucket/key.png", "bucket"),
        ("s3://inputs/", "s3://bucket/key"),
        ("http://[::1/a", "malformed"),
    ],
)
def test_refused_urls(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=reason):
        check_url(url, allow_private=False, s3_buckets=["inputs"])


def test_allowed_urls() -> None:
    assert (
        check_url("https://93.184.216.34/a.png", allow_private=False, s3_buckets=[])
        == "https://93.184.216.34/a.png"
    )
    assert (
        check_url("http://127.0.0.1:9/a.png", allow_private=True, s3_buckets=[]) == "http://127.0.0.1:9/a.png"
    )
    assert check_url("s3://inputs/dir/a.png", allow_private=False, s3_buckets=["inputs"]) == S3Location(
        "inputs", "dir/a.png"
    )


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", "video/quicktime"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm", "video/webm"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "video/x-msvideo"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", None),
        (pickle.dumps({"motion": [1, 2, 3]}), None),
        (b"#!/bin/sh\necho hi\n", None),
        (b"", None),
    ],
)
def test_sniff(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected
