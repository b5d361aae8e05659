"""A small Python client of the REST API: submit, status, events, wait (with progress), cancel, download,
and open live sessions (service.live_client then connects to them).

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from common.expression import KEYFRAMES, ExpressionControls, Keyframe
from common.live import LiveOptions, SessionGrant
from common.options import AnimationOptions
from service.contract import TERMINAL_STATUSES, Job, Upload, WebhookSpec

Input = str | PathLike[str]
STREAM_READ_TIMEOUT_S = 60.0
"""Longest silence on an event stream before it counts as broken (the gateway sends keep-alives)."""


@dataclass(frozen=True)
class Event:
    """One event of a job: its id (for Last-Event-ID) and the job as it was then."""

    id: str
    job: Job


_URL_SCHEMES = ("http://", "https://", "s3://")


class ApiError(Exception):
    """The service answered with an error status: its problem details (`detail`, our `code`, the field
    `errors` of a 422) and, over a rate limit, the seconds to wait (`retry_after`)."""

    def __init__(
        self,
        status_code: int,
        detail: Any,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"HTTP {status_code}" + (f" [{code}]" if code else "") + f": {detail}")
        self.status_code = status_code
        self.detail = detail
        self.code = code
        self.errors = errors
        self.retry_after = retry_after


def _timed_out(job_id: str, job: Job | None, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"job {job_id} still {job.status if job else 'unknown'} after {timeout} s")


def _is_url(value: Input) -> bool:
    return isinstance(value, str) and value.lower().startswith(_URL_SCHEMES)


def _options_json(options: AnimationOptions | Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    model = options if isinstance(options, AnimationOptions) else AnimationOptions.model_validate(options)
    return model.model_dump(mode="json", exclude_defaults=True)


def _edit_json(
    expression: ExpressionControls | Mapping[str, Any] | None,
    keyframes: list[Keyframe] | list[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """The `expression` and `keyframes` of a request as JSON values (only those given)."""
    edit: dict[str, Any] = {}
    if expression is not None:
        controls = ExpressionControls.model_validate(expression)
        edit["expression"] = controls.model_dump(mode="json", exclude_unset=True)
    if keyframes is not None:
        edit["keyframes"] = KEYFRAMES.dump_python(
            KEYFRAMES.validate_python(keyframes), mode="json", exclude_unset=True
        )
    return edit


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
                problem = response.json()
                detail, code, errors = problem.get("detail"), problem.get("code"), problem.get("errors")
            except (ValueError, AttributeError):
                detail, code, errors = response.text.strip()[:500], None, None
            retry = response.headers.get("retry-after", "")
            retry_after = int(retry) if retry.isdigit() else None
            raise ApiError(response.status_code, detail, code=code, errors=errors, retry_after=retry_after)
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
        source: Input | None,
        driving: Input | None = None,
        *,
        options: AnimationOptions | Mapping[str, Any] | None = None,
        expression: ExpressionControls | Mapping[str, Any] | None = None,
        keyframes: list[Keyframe] | list[Mapping[str, Any]] | None = None,
        priority: str = "default",
        filename: str | None = None,
        idempotency_key: str | None = None,
        direct_upload: bool = False,
        webhook: WebhookSpec | Mapping[str, Any] | None = None,
        output_kind: str = "animation",
    ) -> Job:
        """Submit a job: an animation (`driving`: a video, an image or a motion template), a still edit
        (`expression` alone), a keyframe video (`keyframes`), an animation with `expression` offsets,
        or (`output_kind="motion"`, no `source`) the motion template of the driving video. Local files
        go as multipart unless `direct_upload` (or a URL is mixed in). `webhook` {url, events}: where
        the service POSTs the job's events."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        opts = _options_json(options)
        output = {"filename": filename} if filename else {}
        if output_kind != "animation":
            output["kind"] = output_kind
        given = (("source", source), ("driving", driving))
        inputs = {name: value for name, value in given if value is not None}
        edit = _edit_json(expression, keyframes)
        if webhook is not None:
            edit["webhook"] = WebhookSpec.model_validate(webhook).model_dump(mode="json")
        if direct_upload or any(_is_url(value) for value in inputs.values()):
            body = {
                **{name: self._reference(value) for name, value in inputs.items()},
                "options": opts,
                "priority": priority,
                "output": output,
                **edit,
            }
            response = self._http.post("/v1/jobs", json=body, headers=headers)
        else:
            with ExitStack() as stack:
                files = {
                    name: (Path(value).name, stack.enter_context(Path(value).open("rb")))
                    for name, value in inputs.items()
                }
                data = {"options": json.dumps(opts), "priority": priority, "output": json.dumps(output)}
                data.update({name: json.dumps(value) for name, value in edit.items()})
                response = self._http.post("/v1/jobs", files=files, data=data, headers=headers)
        return Job.model_validate(self._check(response).json())

    def open_live(
        self,
        source: Input,
        *,
        options: LiveOptions | Mapping[str, Any] | None = None,
        direct_upload: bool = False,
    ) -> SessionGrant:
        """Open a live session (POST /v1/live/sessions) for the portrait `source` (sent as multipart, or
        first uploaded with `direct_upload`); connect to its `websocket_url` with
        service.live_client.LiveConnection within the token's life. ApiError 503 when no slot is free."""
        model = options if isinstance(options, LiveOptions) else LiveOptions.model_validate(options or {})
        data = {"options": model.model_dump_json(exclude_defaults=True)}
        if direct_upload:
            response = self._http.post("/v1/live/sessions", data={**data, "upload_id": self.upload(source)})
        else:
            with Path(source).open("rb") as file:
                files = {"source": (Path(source).name, file)}
                response = self._http.post("/v1/live/sessions", files=files, data=data)
        return SessionGrant.model_validate(self._check(response).json())

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

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events (GET /v1/jobs/{id}/events): from its latest, or after `last_event_id`;
        ends after the final one. Raises ApiError, or httpx.HTTPError when the stream breaks."""
        for event in self._stream(job_id, last_event_id):
            if event is not None:
                yield event

    def _stream(self, job_id: str, last_event_id: str | None) -> Iterator[Event | None]:
        """The server-sent events of the job, and None for each keep-alive comment."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_S)
        url = f"/v1/jobs/{job_id}/events"
        with self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            event_id, data = None, []
            for line in response.iter_lines():
                if line.startswith(":"):
                    yield None
                elif line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:
                    yield Event(event_id or "", Job.model_validate_json("\n".join(data)))
                    event_id, data = None, []

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Follow the job's event stream until it ends, calling `on_progress` on every event; should the
        stream break, poll instead (cheaply, with If-None-Match), calling it on every change.

        Returns the final Job (check its status); raises TimeoutError after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        job: Job | None = None
        try:
            for event in self._stream(job_id, None):
                if event is not None:
                    job = event.job
                    if on_progress is not None:
                        on_progress(job)
                    if job.status in TERMINAL_STATUSES:
                        return job
                if deadline is not None and time.monotonic() > deadline:
                    raise _timed_out(job_id, job, timeout)
        except httpx.HTTPError:
            pass  # the stream broke: poll
        return self._poll(job_id, job, deadline, timeout, poll_s, on_progress)

    def _poll(
        self,
        job_id: str,
        job: Job | None,
        deadline: float | None,
        timeout: float | None,
        poll_s: float,
        on_progress: Callable[[Job], None] | None,
    ) -> Job:
        etag: str | None = None
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
                raise _timed_out(job_id, job, timeout)
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
