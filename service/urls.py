"""The rules for URL inputs: http, https and s3 only, and never a private address unless allowed."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("http", "https", "s3")


class UnsafeURL(ValueError):
    """A URL input the service refuses; the message says why."""


@dataclass(frozen=True)
class S3Location:
    """An s3://bucket/key URL, split."""

    bucket: str
    key: str


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _is_public(address: str) -> bool:
    """Whether an address is global unicast, also the IPv4 address an IPv6 one embeds or maps to."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def resolve_public(host: str, port: int) -> list[str]:
    """Every address `host` resolves to; UnsafeURL if it does not resolve or any is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"host {host!r} does not resolve") from exc
    addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        if not _is_public(address):
            raise UnsafeURL(
                f"host {host!r} resolves to a private, loopback or link-local address ({address})"
            )
    return addresses


def check_url(url: str, *, allow_private: bool, s3_buckets: list[str]) -> str | S3Location:
    """Validate a URL input: the http(s) URL itself, or the S3 location of an s3:// URL.

    http(s) hosts are resolved, and refused if any address is private, loopback, link-local,
    multicast or otherwise not global, unless `allow_private`. s3:// URLs are read with the
    service's own credentials, so only the buckets listed in `s3_buckets` are accepted.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"malformed URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsafeURL(f"URL scheme {parts.scheme or '(none)'!r} is not allowed; use http, https or s3")
    if scheme == "s3":
        key = parts.path.lstrip("/")
        if not parts.netloc or not key:
            raise UnsafeURL("an s3 URL looks like s3://bucket/key")
        if parts.netloc not in s3_buckets:
            raise UnsafeURL(f"s3 bucket {parts.netloc!r} is not an allowed input bucket")
        return S3Location(bucket=parts.netloc, key=key)
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("URLs with credentials are not allowed")
    host = parts.hostname
    if not host:
        raise UnsafeURL("the URL has no host")
    if not allow_private:
        resolve_public(host, port or (443 if scheme == "https" else 80))
    return url
