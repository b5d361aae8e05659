"""The API docs, offline: Swagger UI at /docs and ReDoc at /redoc, their assets served by the gateway.

The assets are the Swagger UI and ReDoc builds that the `fastapi-offline` package ships (a
maintained package that tracks their releases), mounted as static files; the pages name no other
host (no CDN, no web fonts), so the docs work on a machine without internet.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
"""Where the Swagger UI and ReDoc files are served."""


def assets_dir() -> Path:
    """The folder of swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png."""
    return Path(str(files("fastapi_offline") / "static"))


def install(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets on `app` (created with docs_url=None, redoc_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        urls = _rooted(
            request,
            openapi_url=openapi_url,
            oauth2_redirect_url=oauth2_redirect,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )
        return get_swagger_ui_html(
            title=f"{app.title} - Swagger UI", swagger_ui_parameters={"validatorUrl": None}, **urls
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        urls = _rooted(
            request,
            openapi_url=openapi_url,
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
        )
        return get_redoc_html(title=f"{app.title} - ReDoc", with_google_fonts=False, **urls)


def _rooted(request: Request, **paths: str) -> dict[str, Any]:
    """`paths` under the root path the gateway is served at (behind a proxy's prefix)."""
    root = request.scope.get("root_path", "")
    return {name: f"{root}{path}" for name, path in paths.items()}
