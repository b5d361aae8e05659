"""API keys in the settings: sha256 digests, as a JSON list or comma-separated."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from service.settings import Settings

A, B = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()


@pytest.mark.parametrize("raw", [f"{A},{B}", f" {A.upper()} , {B},", f'["{A}", "{B}"]'])
def test_api_keys_from_the_environment(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEPORTRAIT_API_KEYS", raw)
    assert Settings().api_keys == [A, B]


def test_no_api_keys_means_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEPORTRAIT_API_KEYS", "")
    assert Settings().api_keys == []


def test_api_keys_must_be_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEPORTRAIT_API_KEYS", "my-plain-secret")
    with pytest.raises(ValidationError, match="sha256 hex digests"):
        Settings()
