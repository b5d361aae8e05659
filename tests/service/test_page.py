"""The page's files at the gateway (service.gateway.page): served, offline, shipped as package data.

What the page does in a browser is tests/service/test_page_browser.py.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.gateway.page import ASSETS_URL, static_dir
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
FILES = sorted(path for path in static_dir().rglob("*") if path.is_file())
ANOTHER_HOST = re.compile(
    r"[a-z][a-z0-9+.-]*://|(?:src|href|action)\s*=\s*[\"']//|url\(\s*[\"']?//|@import", re.IGNORECASE
)
"""A URL with a scheme (http://, wss://, ...), a protocol-relative reference, or a CSS import."""
REFERENCES = re.compile(r"""(?:src|href)="([^"]+)"|from\s+"([^"]+)"|import\(\s*"([^"]+)"\s*\)""")


@pytest.fixture
def url(make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str]) -> str:
    return gateway_server(make_settings())


def test_the_page_is_served_with_a_policy_that_keeps_it_on_the_gateway(url: str) -> None:
    page = httpx.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (static_dir() / "index.html").read_text()
    policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    for directive in ("default-src", "script-src", "style-src", "font-src"):
        assert policy[directive] == "'self'", directive
    assert "/" not in httpx.get(f"{url}/openapi.json", timeout=10).json()["paths"], "the page is no API route"


def test_no_file_of_the_page_names_another_host() -> None:
    assert {path.name for path in FILES} >= {"index.html", "page.css", "main.js"}
    for path in FILES:
        found = ANOTHER_HOST.search(path.read_text())
        assert found is None, f"{path.relative_to(static_dir())} names another host: {found.group(0)!r}"


def test_the_checker_sees_other_hosts() -> None:
    for text in (
        '<script src="https://cdn.example.com/x.js">',
        '<link href="//fonts.example.com/a.css">',
        "@import 'x.css';",
        "background: url(//example.com/a.png)",
        'new WebSocket("wss://example.com")',
    ):
        assert ANOTHER_HOST.search(text), text


def test_every_file_the_page_references_is_served(url: str) -> None:
    """index.html's scripts and style sheet, and every module the scripts import, answer 200."""
    pending, seen = [("/", static_dir() / "index.html")], set()
    while pending:
        base, path = pending.pop()
        for groups in REFERENCES.findall(path.read_text()):
            reference = next(group for group in groups if group)
            if reference.startswith("data:") or reference.startswith("#"):
                continue
            target = httpx.URL(f"{url}{base}").join(reference)
            if target.path in seen:
                continue
            seen.add(target.path)
            answer = httpx.get(target, timeout=10)
            assert answer.status_code == 200, (path.name, reference)
            relative = target.path.removeprefix(f"{ASSETS_URL}/")
            assert answer.content == (static_dir() / relative).read_bytes()
            if relative.endswith(".js"):
                assert "javascript" in answer.headers["content-type"]
                pending.append((target.path, static_dir() / relative))
    assert len([path for path in seen if path.endswith(".js")]) == len(list(static_dir().rglob("*.js")))


def test_every_file_of_the_page_is_package_data() -> None:
    """The gateway image installs the package (no source tree): pyproject's globs must take every file."""
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = static_dir().parent
    globs = package_data["service.gateway"]
    for path in FILES:
        relative = str(path.relative_to(package))
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in globs), relative
