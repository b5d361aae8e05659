"""API keys (digests at rest, never logged), per-key rate limits shared by gateways, GET /v1/jobs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio

from service.gateway.auth import key_id
from service.gateway.ratelimit import Decision, RateLimiter
from service.settings import Settings
from tests.conftest import free_port
from tests.waiting import wait_until
from tests.worker.doubles import face_image, moving_frames, write_png, write_video

KEY_A, KEY_B, WRONG = "alpha-secret-4f1c9e", "bravo-secret-8d2a7b", "wrong-secret-0e6f3d"
UNKNOWN_JOB = "/v1/jobs/" + "0" * 32
REPO = Path(__file__).resolve().parents[2]


def digest(key: str) -> str:
    """The sha256 hex digest the settings hold for a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def get(url: str, path: str, key: str | None = None) -> httpx.Response:
    """GET with an X-API-Key header (or none)."""
    return httpx.get(url + path, headers={"X-API-Key": key} if key else {}, timeout=10)


@contextmanager
def gateway_process(settings: Settings, log: Path) -> Iterator[str]:
    """`liveportrait gateway`'s entry point in a subprocess (DEBUG logs to `log`); yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LIVEPORTRAIT_HOST": "127.0.0.1",
        "LIVEPORTRAIT_PORT": str(port),
        "LIVEPORTRAIT_REDIS_URL": settings.redis_url,
        "LIVEPORTRAIT_QUEUE_PREFIX": settings.queue_prefix,
        "LIVEPORTRAIT_LOCAL_STORAGE_DIR": str(settings.local_storage_dir),
        "LIVEPORTRAIT_API_KEYS": ",".join(settings.api_keys),
        "LIVEPORTRAIT_RATE_LIMIT_PER_MINUTE": str(settings.rate_limit_per_minute),
        "LIVEPORTRAIT_LOG_LEVEL": "DEBUG",
        "LIVEPORTRAIT_LOG_JSON": "true",
    }
    code = "from service.gateway import serve; serve()"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, f"the gateway exited:\n{log.read_text()}"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, 20, "the gateway to answer /healthz")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_rate_limit_is_per_key_and_shared_by_gateways_and_keys_are_never_logged(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str], tmp_path: Path
) -> None:
    settings = make_settings(api_keys=[digest(KEY_A), digest(KEY_B)], rate_limit_per_minute=5)
    log = tmp_path / "gateway.log"
    first = gateway_server(settings)
    with gateway_process(settings, log) as second:
        for i in range(5):
            assert get(first if i % 2 else second, UNKNOWN_JOB, KEY_A).status_code == 404
        for url in (first, second):
            limited = get(url, UNKNOWN_JOB, KEY_A)
            assert limited.status_code == 429, limited.text
            assert 1 <= int(limited.headers["retry-after"]) <= 120
            assert limited.headers["ratelimit-limit"] == "5" and "per minute" in limited.json()["detail"]
        assert get(second, UNKNOWN_JOB, KEY_B).status_code == 404, "another key has its own budget"
        assert get(second, UNKNOWN_JOB, WRONG).status_code == 401
        assert get(second, UNKNOWN_JOB).status_code == 401
        assert get(second, "/healthz").status_code == 200 and get(first, "/readyz").status_code == 200
    text = log.read_text()
    for secret in (KEY_A, KEY_B, WRONG):
        assert secret not in text, f"a raw API key is in the gateway's log: {secret}"
    assert '"event": "request.rate_limited"' in text and f"key:{key_id(digest(KEY_A))}" in text
    assert '"event": "auth.rejected"' in text and key_id(digest(WRONG)) in text


def test_without_keys_the_limit_is_per_client_address(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str]
) -> None:
    url = gateway_server(make_settings(rate_limit_per_minute=2))
    assert [get(url, UNKNOWN_JOB).status_code for _ in range(3)] == [404, 404, 429]


def test_sliding_window_counts_the_previous_minute(redis_url: str, queue_prefix: str) -> None:
    """A full previous minute still blocks a caller whose current minute is empty (no fixed-window burst)."""
    client = redis.Redis.from_url(redis_url)

    def second_not_at_a_minutes_end() -> int | None:
        """Redis's current second, unless it is one of a minute's last two (the hits below must
        fall in the same minute)."""
        seconds = int(client.time()[0])
        return seconds if seconds % 60 <= 58 else None

    seconds = wait_until(second_not_at_a_minutes_end, 5, "Redis's clock to leave the end of a minute")
    client.set(f"{queue_prefix}:ratelimit:busy:{seconds // 60 - 1}", 1000, ex=120)

    async def hits() -> tuple[Decision, list[bool]]:
        async with redis.asyncio.Redis.from_url(redis_url) as aclient:
            limiter = RateLimiter(aclient, queue_prefix, limit=3)
            return await limiter.hit("busy"), [(await limiter.hit("calm")).allowed for _ in range(4)]

    decision, calm = asyncio.run(hits())
    assert not decision.allowed and 1 <= decision.retry_after_s <= 60
    assert calm == [True, True, True, False]
    client.close()


def test_list_jobs_shows_only_the_callers_jobs_newest_first(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str], tmp_path: Path
) -> None:
    settings = make_settings(api_keys=[digest(KEY_A), digest(KEY_B)])
    url = gateway_server(settings)
    files = {
        "source": ("face.png", write_png(tmp_path / "face.png", face_image(64)).read_bytes()),
        "driving": ("d.mp4", write_video(tmp_path / "d.mp4", moving_frames(4)).read_bytes()),
    }
    submitted: dict[str, list[str]] = {KEY_A: [], KEY_B: []}
    with httpx.Client(base_url=url, timeout=10) as http:
        for key in (KEY_A, KEY_B, KEY_A, KEY_A, KEY_B, KEY_A, KEY_A):
            response = http.post("/v1/jobs", files=files, headers={"X-API-Key": key})
            assert response.status_code == 202, response.text
            submitted[key].append(response.json()["id"])

        def pages(key: str, limit: int) -> list[list[dict]]:
            found, cursor = [], None
            while True:
                params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
                response = http.get("/v1/jobs", params=params, headers={"X-API-Key": key})
                assert response.status_code == 200, response.text
                found.append(response.json()["jobs"])
                cursor = response.json()["next_cursor"]
                if cursor is None:
                    return found

        a_pages = pages(KEY_A, 2)
        assert [len(page) for page in a_pages] == [2, 2, 1]
        assert [job["id"] for page in a_pages for job in page] == submitted[KEY_A][::-1]
        newest = a_pages[0][0]
        assert newest == http.get(f"/v1/jobs/{newest['id']}", headers={"X-API-Key": KEY_A}).json()
        assert [job["id"] for page in pages(KEY_B, 10) for job in page] == submitted[KEY_B][::-1]

        first_a_page = http.get("/v1/jobs", params={"limit": 1}, headers={"X-API-Key": KEY_A}).json()
        with_a_cursor = http.get(
            "/v1/jobs", params={"cursor": first_a_page["next_cursor"]}, headers={"X-API-Key": KEY_B}
        ).json()
        assert {job["id"] for job in with_a_cursor["jobs"]} <= set(submitted[KEY_B])

        client = redis.Redis.from_url(settings.redis_url)
        client.delete(f"{settings.queue_prefix}:job:{submitted[KEY_A][2]}")  # as if it had expired
        remaining = [job["id"] for page in pages(KEY_A, 2) for job in page]
        assert remaining == [j for j in submitted[KEY_A][::-1] if j != submitted[KEY_A][2]]
        owner_index = f"{settings.queue_prefix}:owner:{digest(KEY_A)}"
        assert client.zscore(owner_index, submitted[KEY_A][2]) is None, "expired jobs leave the index"
        client.close()

        bad_cursor = "1.5~not-a-job"
        for params in ({"cursor": "garbage!"}, {"cursor": bad_cursor}, {"limit": 0}, {"limit": 101}):
            response = http.get("/v1/jobs", params=params, headers={"X-API-Key": KEY_A})
            assert response.status_code == 422, (params, response.text)
        assert http.get("/v1/jobs").status_code == 401


@pytest.mark.parametrize("limit", [1, 3])
def test_listing_with_ties_in_creation_time(
    limit: int, make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str]
) -> None:
    """Jobs created in the same microsecond (two gateways at once) are each listed exactly once."""
    settings = make_settings()
    url = gateway_server(settings)
    client = redis.Redis.from_url(settings.redis_url)
    ids = [f"{i:032x}" for i in range(7)]
    now = time.time()
    for i, job_id in enumerate(ids):
        client.hset(
            f"{settings.queue_prefix}:job:{job_id}",
            mapping={
                "status": "queued",
                "priority": "default",
                "payload": "{}",
                "created_at": now,
                "owner": "open",
            },
        )
        client.zadd(f"{settings.queue_prefix}:owner:open", {job_id: round(now - (i // 3), 6)})
    client.close()
    listed, cursor = [], None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{url}/v1/jobs", params=params).json()
        listed += [job["id"] for job in page["jobs"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert sorted(listed) == ids and len(listed) == len(set(listed))
