"""A small Python client of the REST API: submit, status, wait (with progress), cancel, download.

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        job = client.submit("portrait.jpg", "driving.mp4", options={"flag_stitching": True})
        job = client.wait(job.id, on_progress=lambda j: print(j.progress.fraction))
        client.download(job.id, "out.mp4")

Inputs are local paths (sent as multipart, or with `direct_upload=True` uploaded first through
POST /v1/uploads, e.g. straight to S3) or URLs (http, https, s3) the service fetches itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from common.options import AnimationOptions
from service.contract import TERMINAL_STATUSES, Job, Upload

Input = str | PathLike[str]
_URL_SCHEMES = ("http://", "https://", "s3://")


class ApiError(Exception):
    """The service answered with an error status."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


def _is_url(value: Input) -> bool:
    return isinstance(value, str) and value.lower().startswith(_URL_SCHEMES)


def _options_json(options: AnimationOptions | Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    model = options if isinstance(options, AnimationOptions) else AnimationOptions.model_validate(options)
    return model.model_dump(mode="json", exclude_defaults=True)


class Client:
    """A synchronous client of one gateway."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._plain = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()
        self._plain.close()

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except (ValueError, AttributeError):
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    def upload(self, path: Input) -> str:
        """Upload a local file through POST /v1/uploads (presigned form); returns its upload id."""
        path = Path(path)
        response = self._check(self._http.post("/v1/uploads", json={"size_bytes": path.stat().st_size}))
        grant = Upload.model_validate(response.json())
        with path.open("rb") as file:
            sent = self._plain.post(grant.url, data=grant.fields, files={grant.file_field: (path.name, file)})
        self._check(sent)
        return grant.upload_id

    def submit(
        self,
        source: Input,
        driving: Input,
        *,
        options: AnimationOptions | Mapping[str, Any] | None = None,
        priority: str = "default",
        filename: str | None = None,
        idempotency_key: str | None = None,
        direct_upload: bool = False,
    ) -> Job:
        """Submit a job. Local files go as multipart unless `direct_upload` (or a URL is mixed in)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        opts = _options_json(options)
        output = {"filename": filename} if filename else {}
        if direct_upload or _is_url(source) or _is_url(driving):
            body = {
                "source": self._reference(source),
                "driving": self._reference(driving),
                "options": opts,
                "priority": priority,
                "output": output,
            }
            response = self._http.post("/v1/jobs", json=body, headers=headers)
        else:
            with ExitStack() as stack:
                files = {
                    name: (Path(value).name, stack.enter_context(Path(value).open("rb")))
                    for name, value in (("source", source), ("driving", driving))
                }
                data = {"options": json.dumps(opts), "priority": priority, "output": json.dumps(output)}
                response = self._http.post("/v1/jobs", files=files, data=data, headers=headers)
        return Job.model_validate(self._check(response).json())

    def _reference(self, value: Input) -> dict[str, str]:
        if _is_url(value):
            return {"url": str(value)}
        return {"upload_id": self.upload(value)}

    def status(self, job_id: str) -> Job:
        """The job's current state."""
        return Job.model_validate(self._check(self._http.get(f"/v1/jobs/{job_id}")).json())

    def cancel(self, job_id: str) -> Job:
        """Cancel the job (at once when queued, at the next frame batch when running)."""
        return Job.model_validate(self._check(self._http.post(f"/v1/jobs/{job_id}/cancel")).json())

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll (cheaply, with If-None-Match) until the job ends; call `on_progress` on every change.

        Returns the final Job (check its status); raises TimeoutError after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        etag: str | None = None
        job: Job | None = None
        while True:
            headers = {"If-None-Match": etag} if etag else {}
            response = self._http.get(f"/v1/jobs/{job_id}", headers=headers)
            if response.status_code != 304:
                job = Job.model_validate(self._check(response).json())
                etag = response.headers.get("ETag")
                if on_progress is not None:
                    on_progress(job)
            if job is not None and job.status in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status if job else 'unknown'} after {timeout} s")
            time.sleep(poll_s)

    def download(self, job_id: str, dest: Input) -> Path:
        """Save the result of a succeeded job to `dest` (following a redirect to storage)."""
        dest = Path(dest)
        with self._http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
            if response.status_code in (301, 302, 303, 307, 308):
                location = urljoin(self.base_url + "/", response.headers["location"])
                with self._plain.stream("GET", location) as redirected:
                    self._save(redirected, dest)
            else:
                self._save(response, dest)
        return dest

    def _save(self, response: httpx.Response, dest: Path) -> None:
        if response.status_code >= 400:
            response.read()
            self._check(response)
        with dest.open("wb") as out:
            for chunk in response.iter_bytes(1024 * 1024):
                out.write(chunk)
