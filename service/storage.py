"""Object storage behind one small interface: a local directory (the embedded default) or S3.

Keys are relative, slash-separated paths such as ``results/<job id>/<attempt>/output.mp4``; both
stores refuse anything that could escape their root (``..``, absolute paths, odd characters).

Outages: each S3 request is retried by botocore (`s3_max_attempts`, exponential backoff); on top of
that `with_retries` and `put_with_retries` keep retrying a whole transfer for a bounded window and
then raise `StorageUnavailable`. A failed multipart upload is aborted (at once when S3 still
answers, else by the next successful attempt), so no partial object is ever left under a key.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar

from common.errors import LivePortraitError
from service.settings import Settings

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from botocore.client import BaseClient

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_COPY_CHUNK = 1024 * 1024
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 8.0

T = TypeVar("T")


class StorageError(Exception):
    """The store could not be reached or refused an operation."""


class ObjectNotFound(StorageError):
    """No object under this key."""


class StorageUnavailable(StorageError, LivePortraitError):
    """The store stayed unreachable for a whole retry window; `code` and `message` go into a failed job."""

    def __init__(self, message: str) -> None:
        LivePortraitError.__init__(self, "storage_unavailable", message)


class ReadStream(Protocol):
    """A readable, closable byte stream."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes (all that is left when negative); b'' at the end."""
        ...

    def close(self) -> None:
        """Release the stream."""
        ...


@dataclass(frozen=True)
class PresignedPost:
    """An HTML-form upload: POST `fields` plus the file (form field ``file``) to `url`."""

    url: str
    fields: dict[str, str]


class Store(Protocol):
    """What the gateway and the worker need from object storage."""

    def put(self, key: str, data: Path | BinaryIO, content_type: str | None = None) -> None:
        """Store a file or a readable binary stream under `key`, replacing any previous object."""
        ...

    def get(self, key: str, dest: Path) -> Path:
        """Download the object to `dest` and return `dest`."""
        ...

    def open(self, key: str) -> ReadStream:
        """Stream the object's bytes."""
        ...

    def read_head(self, key: str, size: int) -> bytes:
        """The object's first `size` bytes (fewer when it is shorter)."""
        ...

    def size(self, key: str) -> int:
        """The object's size in bytes."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under `prefix` (which ends with '/'); return how many."""
        ...

    def abort_incomplete(self, key: str) -> int:
        """Discard unfinished (multipart) uploads to `key`; return how many."""
        ...

    def presigned_get(
        self, key: str, *, expires_s: int, filename: str | None = None, content_type: str | None = None
    ) -> str | None:
        """A time-limited download URL, or None when the store has none (the gateway streams then)."""
        ...

    def presigned_post(self, key: str, *, max_bytes: int, expires_s: int) -> PresignedPost | None:
        """A time-limited direct-upload form, or None when uploads must go through the gateway."""
        ...

    def check(self) -> None:
        """Raise StorageError unless the store is reachable and usable."""
        ...


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise ValueError."""
    if len(key) > 512 or not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key: {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    if not prefix.endswith("/"):
        raise ValueError(f"a prefix ends with '/': {prefix!r}")
    check_key(prefix[:-1])
    return prefix


class LocalStore:
    """A directory on a local (or shared) file system; writes are atomic renames."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: Path | BinaryIO, content_type: str | None = None) -> None:
        """Copy `data` into place through a temporary file in the same directory."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, Path):
                    with data.open("rb") as src:
                        shutil.copyfileobj(src, out, _COPY_CHUNK)
                else:
                    shutil.copyfileobj(data, out, _COPY_CHUNK)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def get(self, key: str, dest: Path) -> Path:
        """Copy the object to `dest`."""
        with self.open(key) as src, Path(dest).open("wb") as out:
            shutil.copyfileobj(src, out, _COPY_CHUNK)
        return Path(dest)

    def open(self, key: str) -> BinaryIO:
        """Open the object's file for reading."""
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(key) from exc

    def read_head(self, key: str, size: int) -> bytes:
        """The first `size` bytes of the object."""
        with self.open(key) as src:
            return src.read(size)

    def size(self, key: str) -> int:
        """The object's size."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.stat().st_size

    def exists(self, key: str) -> bool:
        """Whether the object's file exists."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the object's file."""
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        """Remove the directory holding the objects under `prefix`."""
        directory = self.root / _check_prefix(prefix)
        if not directory.is_dir():
            return 0
        count = sum(1 for p in directory.rglob("*") if p.is_file())
        shutil.rmtree(directory, ignore_errors=True)
        return count

    def abort_incomplete(self, key: str) -> int:
        """Nothing to do: `put` removes its temporary file when it fails."""
        check_key(key)
        return 0

    def presigned_get(
        self, key: str, *, expires_s: int, filename: str | None = None, content_type: str | None = None
    ) -> str | None:
        """None: local objects are streamed by the gateway."""
        check_key(key)
        return None

    def presigned_post(self, key: str, *, max_bytes: int, expires_s: int) -> PresignedPost | None:
        """None: local uploads go through the gateway."""
        check_key(key)
        return None

    def check(self) -> None:
        """The root directory exists (it is created) and is writable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {self.root}: {exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"{self.root} is not writable")


def make_s3_client(settings: Settings, *, public: bool = False) -> BaseClient:
    """A boto3 S3 client for the configured endpoint (the public one for presigned URLs)."""
    import boto3
    from botocore.config import Config

    endpoint = (settings.s3_public_endpoint_url or settings.s3_endpoint_url) if public else None
    credentials = {}
    if settings.s3_access_key_id is not None and settings.s3_secret_access_key is not None:
        credentials = {
            "aws_access_key_id": settings.s3_access_key_id.get_secret_value(),
            "aws_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
        }
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint or settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=config,
        **credentials,
    )


def transfer_config(settings: Settings) -> TransferConfig:
    """Multipart transfer settings: parts of `s3_multipart_chunk_bytes` above the threshold."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=settings.s3_multipart_threshold_bytes,
        multipart_chunksize=settings.s3_multipart_chunk_bytes,
        max_concurrency=4,
        use_threads=True,
    )


@contextmanager
def _s3_errors(key: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise ObjectNotFound(key) from exc
        raise StorageError(f"S3 error on {key!r}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 unreachable ({key!r}): {exc}") from exc


class S3Store:
    """A bucket (and optional key prefix) on S3 or an S3-compatible endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        prefix = settings.s3_prefix.strip("/")
        self.prefix = f"{check_key(prefix)}/" if prefix else ""
        self.client = make_s3_client(settings)
        self.public_client = (
            make_s3_client(settings, public=True) if settings.s3_public_endpoint_url else self.client
        )
        self.transfer = transfer_config(settings)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: Path | BinaryIO, content_type: str | None = None) -> None:
        """Upload, in parallel parts above the multipart threshold; a failed upload is aborted."""
        extra = {"ContentType": content_type} if content_type else {}
        try:
            with _s3_errors(key):
                if isinstance(data, Path):
                    self.client.upload_file(
                        str(data), self.bucket, self._key(key), extra, Config=self.transfer
                    )
                else:
                    self.client.upload_fileobj(data, self.bucket, self._key(key), extra, Config=self.transfer)
        except StorageError:
            # when S3 is still away, the next successful attempt (or a lifecycle rule) aborts it
            _best_effort(lambda: self.abort_incomplete(key))
            raise

    def get(self, key: str, dest: Path) -> Path:
        """Download, in parallel ranges for large objects."""
        with _s3_errors(key):
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=self.transfer)
        return Path(dest)

    def open(self, key: str) -> ReadStream:
        """The streaming body of a GET."""
        with _s3_errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    def read_head(self, key: str, size: int) -> bytes:
        """A ranged GET of the first `size` bytes."""
        with _s3_errors(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{size - 1}")
            try:
                return body["Body"].read()
            finally:
                body["Body"].close()

    def size(self, key: str) -> int:
        """ContentLength of a HEAD."""
        with _s3_errors(key):
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def exists(self, key: str) -> bool:
        """Whether a HEAD finds the object."""
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        """DELETE the object."""
        with _s3_errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        """List and batch-delete everything under the prefix."""
        full = self.prefix + _check_prefix(prefix)
        count = 0
        with _s3_errors(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if objects:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                    count += len(objects)
        return count

    def abort_incomplete(self, key: str) -> int:
        """List the multipart uploads in progress to exactly this key and abort them."""
        full = self._key(key)
        count = 0
        with _s3_errors(key):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Key"] == full:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=full, UploadId=upload["UploadId"]
                        )
                        count += 1
        return count

    def presigned_get(
        self, key: str, *, expires_s: int, filename: str | None = None, content_type: str | None = None
    ) -> str | None:
        """A presigned GET URL, optionally overriding the download name and content type."""
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        if content_type:
            params["ResponseContentType"] = content_type
        with _s3_errors(key):
            return self.public_client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)

    def presigned_post(self, key: str, *, max_bytes: int, expires_s: int) -> PresignedPost | None:
        """A presigned POST form bound to this key and to at most `max_bytes` bytes."""
        with _s3_errors(key):
            post = self.public_client.generate_presigned_post(
                Bucket=self.bucket,
                Key=self._key(key),
                Conditions=[["content-length-range", 1, max_bytes]],
                ExpiresIn=expires_s,
            )
        return PresignedPost(url=post["url"], fields={k: str(v) for k, v in post["fields"].items()})

    def check(self) -> None:
        """HEAD the bucket."""
        with _s3_errors(self.bucket):
            self.client.head_bucket(Bucket=self.bucket)


def with_retries(
    operation: Callable[[], T],
    *,
    window_s: float,
    what: str,
    cleanup: Callable[[], object] | None = None,
) -> T:
    """Run `operation`, retrying StorageError (not ObjectNotFound) with exponential backoff.

    Retries stop `window_s` seconds after the first failure: then StorageUnavailable is raised.
    `cleanup` (best effort) runs before each retry and once after a success that followed failures.
    """
    deadline: float | None = None
    delay = _RETRY_FIRST_S
    while True:
        try:
            result = operation()
        except ObjectNotFound:
            raise
        except StorageError as exc:
            now = time.monotonic()
            deadline = now + window_s if deadline is None else deadline
            if now >= deadline:
                raise StorageUnavailable(
                    f"the store was unreachable for {window_s:g} s ({what}): {exc}"
                ) from exc
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, _RETRY_MAX_S)
            _best_effort(cleanup)
            continue
        if deadline is not None:
            _best_effort(cleanup)
        return result


def put_with_retries(
    store: Store, key: str, path: Path, *, content_type: str | None, window_s: float
) -> None:
    """`store.put` under `with_retries`; when it gives up, whatever may have reached `key` is removed."""
    try:
        with_retries(
            lambda: store.put(key, path, content_type=content_type),
            window_s=window_s,
            what=f"upload of {key}",
            cleanup=lambda: store.abort_incomplete(key),
        )
    except StorageUnavailable:
        _best_effort(lambda: store.delete(key))
        raise


def _best_effort(action: Callable[[], object] | None) -> None:
    if action is not None:
        with suppress(StorageError):
            action()


def make_store(settings: Settings) -> Store:
    """The store the settings select."""
    if settings.storage_backend == "s3":
        return S3Store(settings)
    return LocalStore(settings.local_storage_dir)
