"""One error body (RFC 9457 problem details) on every route, a spec that lists every status each route
answers, and API docs that load nothing from another host: a real gateway on loopback, real Redis."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from service.gateway.problems import Problem
from service.settings import Settings
from tests.conftest import free_port
from tests.service.test_gateway import KEY, LIMIT, Gw, digest, gw  # noqa: F401  (the fixture)

PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "instance"}


def assert_problem(response: httpx.Response, status: int, code: str) -> Problem:
    """`response` is a Problem of this status and code, served as application/problem+json."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body = response.json()
    assert PROBLEM_KEYS <= set(body) <= PROBLEM_KEYS | {"errors"}, body
    problem = Problem.model_validate(body)
    assert (problem.status, problem.code, problem.type) == (status, code, "about:blank"), body
    assert problem.title and problem.detail and problem.instance == urlsplit(str(response.url)).path
    return problem


def test_every_refusal_has_one_shape(gw: Gw) -> None:  # noqa: F811
    job_id = "0" * 32
    with gw.client() as client, gw.client(key=None) as anonymous:
        assert_problem(anonymous.get("/v1/jobs"), 401, "unauthorized")
        assert_problem(anonymous.get(f"/v1/jobs/{job_id}"), 401, "unauthorized")
        assert_problem(client.get(f"/v1/jobs/{job_id}"), 404, "not_found")
        assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 404, "not_found")
        assert_problem(client.get(f"/v1/jobs/{job_id}/result"), 404, "not_found")
        assert_problem(client.get("/nowhere"), 404, "not_found")
        wrong_method = client.delete("/v1/jobs")
        assert_problem(wrong_method, 405, "method_not_allowed")
        assert wrong_method.headers["allow"] == "GET, POST", "every method of the path, not the first route's"
        text = client.post("/v1/jobs", content=b"hello", headers={"Content-Type": "text/plain"})
        assert_problem(text, 415, "unsupported_media")
        not_media = client.post("/v1/jobs", files=gw.files(driving=b"just some text"))
        assert "'driving' is not" in assert_problem(not_media, 415, "unsupported_media").detail

        big_json = {"source": {"url": "https://example.com/" + "a" * (70 * 1024)}}
        assert_problem(client.post("/v1/jobs", json=big_json), 413, "too_large")
        big_field = client.post("/v1/jobs", files=gw.files(), data={"options": " " * (1100 * 1024)})
        assert "form field" in assert_problem(big_field, 413, "too_large").detail
        assert_problem(client.post("/v1/jobs", content=b"x" * (LIMIT + 1)), 413, "too_large")

        nan = client.post("/v1/jobs", files=gw.files(), data={"options": '{"driving_multiplier": NaN}'})
        problem = assert_problem(nan, 422, "invalid_request")
        assert problem.errors is not None and len(problem.errors) == 1
        error = problem.errors[0]
        assert error.loc == ["body", "options", "driving_multiplier"] and error.type == "finite_number"
        assert "finite" in error.msg and "driving_multiplier" in problem.detail
        listing = assert_problem(client.get("/v1/jobs", params={"limit": 0}), 422, "invalid_request")
        assert listing.errors is not None and listing.errors[0].loc == ["query", "limit"]
        both = {"source": {"url": "https://example.com/a.png", "upload_id": job_id}}
        assert_problem(client.post("/v1/jobs", json=both), 422, "invalid_request")
        too_many = client.post(
            "/v1/jobs",
            files=gw.files(),
            data={"options": "{}", "output": "{}", **{f"extra{i}": "x" for i in range(10)}},
        )
        assert_problem(too_many, 422, "invalid_request")


def test_rate_limit_and_outages_are_problems(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str]
) -> None:
    limited = gateway_server(make_settings(api_keys=[digest(KEY)], rate_limit_per_minute=1))
    headers = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{limited}/v1/jobs", headers=headers).status_code == 200
    over = httpx.get(f"{limited}/v1/jobs", headers=headers)
    assert_problem(over, 429, "rate_limited")
    assert int(over.headers["retry-after"]) >= 1

    down = gateway_server(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert_problem(httpx.get(f"{down}/v1/jobs/{'0' * 32}"), 503, "service_unavailable")
    assert_problem(httpx.get(f"{down}/v1/jobs"), 503, "service_unavailable")


AUTHENTICATED_OPERATIONS = {
    ("post", "/v1/jobs"): {401, 409, 413, 415, 422, 429, 503},
    ("get", "/v1/jobs"): {401, 422, 429, 503},
    ("get", "/v1/jobs/{job_id}"): {401, 404, 422, 429, 503},
    ("get", "/v1/jobs/{job_id}/events"): {401, 404, 422, 429, 503},
    ("post", "/v1/jobs/{job_id}/cancel"): {401, 404, 409, 422, 429, 503},
    ("get", "/v1/jobs/{job_id}/result"): {401, 404, 409, 410, 422, 429, 503},
    ("post", "/v1/uploads"): {400, 401, 422, 429, 503},
    ("post", "/v1/uploads/{upload_id}"): {403, 404, 413, 415, 422, 503},
}


def test_the_spec_lists_every_status_and_what_is_enforced(gw: Gw) -> None:  # noqa: F811
    spec = httpx.get(f"{gw.url}/openapi.json").json()
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for (method, path), statuses in AUTHENTICATED_OPERATIONS.items():
        answers = spec["paths"][path][method]["responses"]
        errors = {int(status) for status in answers if int(status) >= 400}
        assert errors == statuses, (method, path, sorted(errors))
        for status in errors:
            content = answers[str(status)]["content"]
            assert content == {"application/problem+json": {"schema": problem_ref}}, (path, status)
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and set(schemas["Problem"]["required"]) >= {"code", "status"}
    assert schemas["InputRef"]["oneOf"] == [
        {"required": ["url"], "properties": {"url": {"type": "string"}}},
        {"required": ["upload_id"], "properties": {"upload_id": {"type": "string"}}},
    ]
    size = next(b for b in schemas["UploadRequest"]["properties"]["size_bytes"]["anyOf"] if "maximum" in b)
    assert size["maximum"] == gw.settings.max_input_bytes
    parameters = {p["name"]: p["schema"] for p in spec["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert re.fullmatch(parameters["cursor"]["pattern"], "1764547200.123456~" + "0" * 32)
    assert "anyOf" not in parameters["cursor"], "an optional query parameter is never null"
    options = schemas["AnimationOptions"]["properties"]["driving_multiplier"]
    assert (options["minimum"], options["maximum"]) == (0.0, 4.0)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_nothing_from_another_host(gw: Gw, page: str) -> None:  # noqa: F811
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert not re.search(r"(https?:)?//[A-Za-z0-9]", html.text), html.text
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        spec_url = re.search(r"""(?:url|spec-url)[:=] *["']([^"']+)["']""", html.text)
        assert spec_url is not None and spec_url.group(1) == "/openapi.json"
        assert assets, html.text
        for asset in assets:
            assert asset.startswith("/"), asset
            fetched = client.get(urljoin(gw.url, asset))
            assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
        assert json.loads(client.get(spec_url.group(1)).text)["openapi"].startswith("3.")
