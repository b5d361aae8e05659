"""The page at GET / in a real browser (`pytest -k browser`): Debian's Chromium under Playwright,
against a gateway and a worker on loopback (real Redis, the local store) running the real engine on
synthetic weights, on the CPU: inputs of a few frames.

Each test is what a person does on the page: submit a job and watch it play, move a slider and see
the preview change, drive the portrait with a (fake) webcam, meet the API's error answers, use the
page on a phone-sized screen with the keyboard.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from common.options import AnimationOptions
from service.queue import JobQueue, connect
from service.settings import Settings
from tests.service.browser import CHROMIUM, camera_clip, chromium
from tests.worker.doubles import running_worker, write_png, write_video

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from engines.engine import Engine
    from engines.source_cache import SourceCache

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ENGINE: dict[str, Any] = {"device": "cpu", "backend": "torch", "frame_batch": 2}
"""The engine settings of the worker."""
LIVE: dict[str, Any] = {"live_port": 0, "live_heartbeat_s": 0.2}
"""The live server's settings: any free port, a quick heartbeat."""
SCREENSHOTS = os.environ.get("LIVEPORTRAIT_PAGE_SCREENSHOTS")
"""A folder to save the screenshots of docs/page.md in (`LIVEPORTRAIT_PAGE_SCREENSHOTS=docs/images`)."""
JOB_TIMEOUT_MS = 300_000
"""Deadline of a job on a 2-core CPU (the real engine: W + G per frame), only for a broken system."""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Chromium with the fake webcam; skipped only off CI where neither it nor Playwright is installed."""
    has_playwright = importlib.util.find_spec("playwright") is not None
    if not has_playwright or not CHROMIUM.exists():
        missing = f"{CHROMIUM} (apt-get install chromium)" if has_playwright else "playwright (pip)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {missing} is missing")
        pytest.skip(f"{missing} is missing")
    with chromium(camera_clip(tmp_path_factory.mktemp("camera"))) as launched:
        yield launched


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic weights bundle."""
    from engines.weights import write_synthetic_bundle

    return write_synthetic_bundle(tmp_path_factory.mktemp("weights"), 0)


@pytest.fixture(scope="module")
def compute(weights: Path) -> tuple[Engine, SourceCache]:
    """The worker's engine (CPU) and its cache of prepared sources, loaded once for the module."""
    from worker.worker import load_compute

    return load_compute(Settings(weights_dir=weights, **ENGINE))


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """The bundled portrait and a 2-frame driving video of its face moving."""
    from engines.demo import head_motion_frames, portrait

    source = write_png(tmp_path / "portrait.png", portrait())
    driving = write_video(tmp_path / "driving.mp4", list(head_motion_frames(portrait(), 2)), fps=25)
    return source, driving


@pytest.fixture
def stack(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    compute: tuple[Engine, SourceCache],
    weights: Path,
) -> Iterator[Callable[..., tuple[str, Settings]]]:
    """Start a gateway (settings overridden by the keywords), a job worker unless worker=False, and a
    live server with live=True: `url, settings = stack(...)`; all share this test's queue prefix and store."""
    from worker.worker import job_engine, start_live

    engine, cache = compute
    with ExitStack() as started:

        def start(*, worker: bool = True, live: bool = False, **overrides: Any) -> tuple[str, Settings]:
            settings = make_settings(weights_dir=weights, **ENGINE, **LIVE, **overrides)
            url = gateway_server(settings)
            if worker:
                started.enter_context(running_worker(settings, job_engine(settings, engine, cache)))
            if live:
                server = start_live(settings, engine, cache, name=f"live-{settings.queue_prefix}")
                assert server is not None
                started.callback(server.stop)
            return url, settings

        yield start


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (its own localStorage) and page; no script error may happen on it."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def screenshot(page: Page, name: str) -> None:
    """Save what the page shows as SCREENSHOTS/page-`name`.png, when a folder is given."""
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"page-{name}.png"))


def open_page(page: Page, url: str, tab: str = "animate") -> None:
    """Load the page at `url` on tab `tab`, once its forms are built from the schema."""
    page.goto(f"{url}/#{tab}")
    page.wait_for_selector("body[data-ready='true']")


def test_browser_animate_job_plays_in_a_video(stack, page: Page, inputs: tuple[Path, Path]) -> None:
    url, settings = stack()
    source, driving = inputs
    open_page(page, url)
    assert page.input_value("#animate-option-scale") == "2.3", "the options show their defaults"
    assert page.input_value("#animate-option-driving_option") == "expression-friendly"
    assert page.is_checked("#animate-option-flag_stitching")
    page.click("text=Animation options")
    page.fill("#animate-option-driving_multiplier", "1.5")
    page.set_input_files("#animate-source", str(source))
    page.set_input_files("#animate-driving", str(driving))
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as answer:
        page.click("#animate-submit")
    assert answer.value.status == 202, answer.value.text()
    job_id = answer.value.json()["id"]

    video = page.locator("#animate-job .job-video")
    video.wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    shown = video.evaluate(
        """async (video) => {
            video.muted = true;
            await video.play();
            // read as a frame is presented: a clip of 2 frames that loops may be seeking back later
            const frame = await new Promise((resolve) =>
                video.requestVideoFrameCallback((now, metadata) =>
                    resolve({readyState: video.readyState, presented: metadata.presentedFrames})));
            return {readyState: frame.readyState, width: video.videoWidth, height: video.videoHeight,
                    duration: video.duration, presented: frame.presented};
        }"""
    )
    assert shown["readyState"] >= 2 and shown["presented"] >= 1, shown
    assert (shown["width"], shown["height"]) == (512, 512), shown
    assert shown["duration"] == pytest.approx(2 / 25, abs=0.02), shown
    assert page.locator("#animate-job .job-progress").evaluate("p => p.value") == 1
    assert "Succeeded" in page.inner_text("#animate-job .job-status")
    assert str(page.get_attribute("#animate-job .job-download", "href")).startswith("blob:")

    record = JobQueue(connect(settings), settings).get(job_id)
    assert record is not None
    options = AnimationOptions.model_validate(record.payload["options"])
    assert options == AnimationOptions(driving_multiplier=1.5)
    page.wait_for_function(
        "id => document.querySelector('#jobs-body').innerText.includes(`${id}`)", arg=job_id[:8]
    )
    assert "succeeded" in page.locator("#jobs-body tr").first.inner_text()
    page.click("text=Animation options")  # folded, so that the screenshot shows the result playing
    screenshot(page, "animate")


def image_pixels(page: Page, selector: str) -> list[int]:
    """The RGBA pixels of the decoded <img> `selector`, drawn at 64 x 64."""
    return page.locator(selector).evaluate(
        """async (img) => {
            await img.decode();
            const canvas = document.createElement("canvas");
            canvas.width = canvas.height = 64;
            const context = canvas.getContext("2d");
            context.drawImage(img, 0, 0, 64, 64);
            return Array.from(context.getImageData(0, 0, 64, 64).data);
        }"""
    )


@pytest.mark.parametrize("path", ["live preview", "preview by edit jobs"])
def test_browser_slider_move_changes_the_preview(
    stack, page: Page, inputs: tuple[Path, Path], path: str
) -> None:
    """Through a live session where a slot is free, else (no live server) through still edit jobs."""
    url, _ = stack(live=path == "live preview")
    open_page(page, url, "edit")
    page.set_input_files("#edit-source", str(inputs[0]))
    page.wait_for_selector("#edit-preview[src^='blob:']")
    page.wait_for_function(
        "path => document.querySelector('#edit-status').innerText.includes(path)", arg=path, timeout=60_000
    )
    before_src = page.get_attribute("#edit-preview", "src")
    before = image_pixels(page, "#edit-preview")

    page.focus("#edit-smile")
    page.keyboard.press("End")  # the keyboard moves the slider to its maximum, and lets go
    assert page.input_value("#edit-smile") == "1.3"
    page.wait_for_function(
        "src => { const img = document.querySelector('#edit-preview'); return img.src !== src; }",
        arg=before_src,
        timeout=JOB_TIMEOUT_MS,
    )
    after = image_pixels(page, "#edit-preview")
    difference = np.abs(np.array(before, np.int16) - np.array(after, np.int16)).mean()
    assert difference > 1.0, "the preview shows the edited portrait"
    assert page.is_hidden("#edit-error")
    if path == "live preview":
        screenshot(page, "edit")


def test_browser_live_tab_animates_the_fake_camera(stack, page: Page, inputs: tuple[Path, Path]) -> None:
    url, _ = stack(worker=False, live=True)
    open_page(page, url, "live")
    page.set_input_files("#live-source", str(inputs[0]))
    page.evaluate(
        """() => {
            window.liveFrames = 0;
            const output = document.querySelector("#live-output");
            new MutationObserver(() => { window.liveFrames += 1; })
                .observe(output, {attributes: true, attributeFilter: ["src"]});
        }"""
    )
    page.click("#live-start")
    page.wait_for_function("() => document.querySelector('#live-camera').readyState >= 2")
    page.wait_for_function("() => window.liveFrames >= 1", timeout=JOB_TIMEOUT_MS)
    first = np.array(image_pixels(page, "#live-output"), np.int16)
    differences = []
    for _ in range(6):  # frames sent a moment apart may show the same camera frame: look a few further
        seen = page.evaluate("() => window.liveFrames")
        page.wait_for_function("n => window.liveFrames > n", arg=seen, timeout=JOB_TIMEOUT_MS)
        differences.append(np.abs(first - np.array(image_pixels(page, "#live-output"), np.int16)).mean())
        if differences[-1] > 0.5:
            break
    assert differences[-1] > 0.5, f"the camera's head motion moves the portrait: {differences}"
    assert int(page.inner_text("#live-fps")) >= 0 and int(page.inner_text("#live-latency")) > 0
    assert page.is_hidden("#live-error")

    screenshot(page, "live")
    page.click("#live-reset")
    assert "Reference reset" in page.inner_text("#live-status")
    page.click("#live-stop")
    assert page.inner_text("#live-status") == "Stopped."
    assert page.evaluate("() => document.querySelector('#live-camera').srcObject") is None
    assert page.is_enabled("#live-start") and page.is_disabled("#live-stop")


def test_browser_shows_the_api_errors(stack, page: Page, inputs: tuple[Path, Path], tmp_path: Path) -> None:
    source, driving = inputs
    # 413: an input over the limit, named with the limit
    small, _ = stack(worker=False, max_input_bytes=4096)
    open_page(page, small)
    page.set_input_files("#animate-source", str(source))
    page.set_input_files("#animate-driving", str(driving))
    page.click("#animate-submit")
    error = page.locator("#animate-error")
    error.wait_for(state="visible")
    assert "Too large" in error.inner_text() and "4096" in error.inner_text()

    # a failed job: its code and message
    url, _ = stack()
    blank = write_png(tmp_path / "blank.png", np.zeros((256, 256, 3), np.uint8))
    open_page(page, url)
    page.set_input_files("#animate-source", str(blank))
    page.set_input_files("#animate-driving", str(driving))
    page.click("#animate-submit")
    failure = page.locator("#animate-job .job-error")
    failure.wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    assert "[no_face]" in failure.inner_text(), failure.inner_text()

    # 429: the wait from Retry-After
    limited, _ = stack(worker=False, rate_limit_per_minute=1)
    open_page(page, limited)  # its job list is the one request allowed
    page.click("#jobs-refresh")
    jobs_error = page.locator("#jobs-error")
    jobs_error.wait_for(state="visible")
    assert "Too many requests: wait" in jobs_error.inner_text(), jobs_error.inner_text()
    assert "Retry possible in" in jobs_error.inner_text()


def test_browser_api_key_entered_once_is_kept(stack, page: Page) -> None:
    key = "page-key-5d1f"
    url, _ = stack(worker=False, api_keys=[hashlib.sha256(key.encode()).hexdigest()])
    open_page(page, url)
    jobs_error = page.locator("#jobs-error")
    assert "API key" in jobs_error.inner_text(), "a 401 asks for the key"
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")
    jobs_error.wait_for(state="hidden")
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    assert page.input_value("#api-key") == key
    assert page.is_hidden("#jobs-error")


def test_browser_phone_sized_and_keyboard_usable(stack, browser: Browser) -> None:
    url, _ = stack(worker=False)
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        open_page(page, url)
        page.focus("#tab-animate")
        for tab in ("animate", "edit", "live"):
            if tab != "animate":
                page.keyboard.press("ArrowRight")
            assert page.get_attribute(f"#tab-{tab}", "aria-selected") == "true"
            assert page.evaluate("() => document.activeElement.id") == f"tab-{tab}"
            assert page.is_visible(f"#panel-{tab}")
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the {tab} tab scrolls sideways by {overflow} px"
            unlabelled = page.evaluate(
                """(panel) => [...document.querySelectorAll(`${panel} input, ${panel} select`)]
                    .filter((c) => c.labels.length === 0 && !c.getAttribute("aria-label"))
                    .map((c) => c.id || c.outerHTML)""",
                f"#panel-{tab}",
            )
            assert unlabelled == [], unlabelled
            if tab == "animate":
                screenshot(page, "phone")
    finally:
        context.close()
