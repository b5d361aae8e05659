"""The page to try the service (animate, edit, live) at `GET /`, from our own static files.

The files are package data of `service.gateway` (`static/`: index.html, page.css, js/): plain
JavaScript modules and CSS, no framework, no build step. The page names no other host, and its
Content-Security-Policy lets scripts, styles and fonts come from the gateway alone, so it works
offline. Results may come from another host (a presigned S3 URL the result route redirects to) and
the live WebSocket may be on another port, hence the wider `connect-src`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/page"
"""Where the page's scripts and style sheet are served."""

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "font-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self' ws: wss: http: https:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def static_dir() -> Path:
    """The folder of index.html, page.css and js/."""
    return Path(str(files("service.gateway") / "static"))


def install(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under ASSETS_URL on `app`."""
    folder = static_dir()
    app.mount(ASSETS_URL, StaticFiles(directory=folder), name="page-assets")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}
        return FileResponse(folder / "index.html", media_type="text/html", headers=headers)
