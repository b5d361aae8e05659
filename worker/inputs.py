"""Fetch a job's inputs into its work directory: from the store, an allowed S3 bucket, or http(s).

Every input is bounded in size while it downloads and recognised by its first bytes; URLs are
checked again here (and at every redirect), since DNS may answer differently than it did for
the gateway.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urljoin

import httpx

from common.errors import ErrorCode, LivePortraitError
from common.media import MediaError, MediaLimits, extension, inspect_media
from service.contract import InputLocation
from service.settings import Settings
from service.storage import ObjectNotFound, Store, make_s3_client, transfer_config, with_retries
from service.urls import S3Location, UnsafeURL, check_url

MAX_REDIRECTS = 3
_CHUNK = 1024 * 1024


class InputError(LivePortraitError):
    """An input the worker cannot use; `code` and `message` go into the failed job."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(code, message)


def _too_large(name: str, limit: int) -> InputError:
    return InputError("too_large", f"the {name} input is larger than {limit} bytes")


def _from_store(store: Store, key: str, dest: Path, name: str, limit: int, window_s: float) -> None:
    try:
        size = with_retries(lambda: store.size(key), window_s=window_s, what=f"size of the {name} input")
        if size > limit:
            raise _too_large(name, limit)
        with_retries(lambda: store.get(key, dest), window_s=window_s, what=f"download of the {name} input")
    except ObjectNotFound as exc:
        raise InputError("input_missing", f"the {name} input is no longer stored") from exc


def _from_s3(settings: Settings, location: S3Location, dest: Path, name: str, limit: int) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    client = make_s3_client(settings)
    try:
        head = client.head_object(Bucket=location.bucket, Key=location.key)
        if int(head["ContentLength"]) > limit:
            raise _too_large(name, limit)
        client.download_file(location.bucket, location.key, str(dest), Config=transfer_config(settings))
    except (BotoCoreError, ClientError) as exc:
        raise InputError("fetch_failed", f"could not read the {name} input from S3: {exc}") from exc


def _from_http(settings: Settings, url: str, dest: Path, name: str, limit: int) -> None:
    current = url
    timeout = httpx.Timeout(settings.url_fetch_timeout_s)
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    check_url(current, allow_private=settings.allow_private_urls, s3_buckets=[])
                except UnsafeURL as exc:
                    raise InputError("url_refused", f"the {name} URL was refused: {exc}") from exc
                with client.stream("GET", current) as response:
                    if response.is_redirect and "location" in response.headers:
                        current = urljoin(current, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise InputError(
                            "fetch_failed", f"GET of the {name} URL answered HTTP {response.status_code}"
                        )
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > limit:
                        raise _too_large(name, limit)
                    received = 0
                    with dest.open("wb") as out:
                        for chunk in response.iter_bytes(_CHUNK):
                            received += len(chunk)
                            if received > limit:
                                raise _too_large(name, limit)
                            out.write(chunk)
                    return
    except httpx.HTTPError as exc:
        raise InputError(
            "fetch_failed", f"could not download the {name} input: {type(exc).__name__}"
        ) from exc
    raise InputError("fetch_failed", f"the {name} URL redirected more than {MAX_REDIRECTS} times")


def fetch_input(
    location: InputLocation, work_dir: Path, name: str, *, store: Store, settings: Settings
) -> Path:
    """Download one input into `work_dir`, check its content and return its path.

    Raises InputError (codes: input_missing, too_large, url_refused, fetch_failed,
    unsupported_media), or StorageUnavailable when the store stays unreachable for
    `storage_retry_window_s`.
    """
    limit = settings.max_input_bytes
    raw = work_dir / f"{name}.download"
    if location.key is not None:
        _from_store(store, location.key, raw, name, limit, settings.storage_retry_window_s)
    else:
        url = str(location.url)
        try:
            checked = check_url(
                url, allow_private=settings.allow_private_urls, s3_buckets=settings.s3_input_buckets
            )
        except UnsafeURL as exc:
            raise InputError("url_refused", f"the {name} URL was refused: {exc}") from exc
        if isinstance(checked, S3Location):
            _from_s3(settings, checked, raw, name, limit)
        else:
            _from_http(settings, url, raw, name, limit)
    with raw.open("rb") as src:
        try:  # the gateway's header checks again: URL inputs reach the worker unchecked
            limits = MediaLimits.from_settings(settings)
            info = inspect_media(src, raw.stat().st_size, limits, motion_templates=name == "driving")
        except MediaError as exc:
            raise InputError(exc.code, f"the {name} input was refused: {exc.message}") from exc
    path = raw.with_name(f"{name}{extension(info.content_type)}")
    raw.rename(path)
    return path
