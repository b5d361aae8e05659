"""The REST gateway: `create_app(settings)` builds it, `serve(settings)` runs it."""

from service.gateway.app import create_app, serve

__all__ = ["create_app", "serve"]
