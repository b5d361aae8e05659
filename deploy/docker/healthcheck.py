#!/usr/bin/env python
"""Container health probe for the two LivePortrait images (Docker HEALTHCHECK, Kubernetes exec probes).

    liveportrait-healthcheck gateway   GET /healthz on this container's own port
    liveportrait-healthcheck worker    an RQ worker started in this container is registered in Redis

A worker counts as alive while RQ keeps its key in Redis: RQ refreshes that key between jobs and, during
a job, stretches its lifetime to the job's timeout, so a busy worker stays healthy and a dead one does not.
Exit status 0 means healthy, 1 unhealthy.
"""

import socket
import sys
import urllib.request
from urllib.error import URLError

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker

from service.settings import get_settings

WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def gateway_url(host: str, port: int) -> str:
    """The /healthz URL of a gateway bound to host:port, reached from inside the same container."""
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def gateway_healthy(url: str, timeout_s: float = 3.0) -> bool:
    """Whether the gateway answers 2xx on its liveness route."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (URLError, OSError):
        return False


def worker_healthy(redis_url: str, hostname: str) -> bool:
    """Whether a live RQ worker registered from `hostname` exists in Redis."""
    try:
        with Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3) as connection:
            return any(worker.hostname == hostname for worker in Worker.all(connection=connection))
    except RedisError:
        return False


def main(argv: list[str]) -> int:
    """Run the probe named by argv[0]; return the process exit status."""
    if len(argv) != 1 or argv[0] not in ("gateway", "worker"):
        print("usage: liveportrait-healthcheck gateway|worker", file=sys.stderr)
        return 1
    settings = get_settings()
    if argv[0] == "gateway":
        healthy = gateway_healthy(gateway_url(settings.host, settings.port))
    else:
        healthy = worker_healthy(settings.redis_url, socket.gethostname())
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
