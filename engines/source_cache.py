"""Prepared sources kept between jobs: a least-recently-used cache bounded in bytes.

An expression edit of a portrait that was prepared moments ago (detection, crop, M and F) only
needs W and G again. Entries are keyed by the source file's content hash and the options that
preparing reads (engines.source.SOURCE_OPTIONS); the bound counts F's feature volume, the frame,
its crop and the motion tensors, wherever they live (f_s on the model's device).
"""

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from common.options import AnimationOptions
from engines.source import SOURCE_OPTIONS, PreparedSource


@dataclass(frozen=True)
class SourceKey:
    """Which prepared source: the sha256 of the file's bytes and the values of the options it depends on."""

    digest: str
    options: tuple[object, ...]


def source_key(path: Path, options: AnimationOptions) -> SourceKey:
    """The cache key of `path` prepared with `options`."""
    with Path(path).open("rb") as file:
        return content_key(hashlib.file_digest(file, "sha256").hexdigest(), options)


def content_key(digest: str, options: AnimationOptions) -> SourceKey:
    """The cache key of a file whose bytes have the sha256 hex `digest`, prepared with `options`."""
    return SourceKey(digest, tuple(getattr(options, name) for name in SOURCE_OPTIONS))


def prepared_bytes(prepared: PreparedSource) -> int:
    """The memory a prepared source holds: f_s, the motion tensors, the frame and its 512 crop."""
    motion = prepared.motion
    tensors = [prepared.f_s, motion.x_s, *vars(motion.info).values()]
    tensors += [r for r in (motion.eye_ratio, motion.lip_ratio) if r is not None]
    crop = prepared.crop
    return sum(t.element_size() * t.nelement() for t in tensors if isinstance(t, torch.Tensor)) + (
        crop.frame.nbytes + crop.crop512.nbytes
    )


class SourceCache:
    """Prepared sources by key, least recently used first out, at most `max_bytes` in all (0: off).

    `hits` and `misses` count the lookups. Safe to share between threads.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[SourceKey, tuple[PreparedSource, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: SourceKey) -> PreparedSource | None:
        """The prepared source of `key`, now the most recently used; None on a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: SourceKey, prepared: PreparedSource) -> None:
        """Keep `prepared`, evicting the least recently used until it fits (one larger than the whole
        bound is not kept)."""
        size = prepared_bytes(prepared)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            while self._bytes + size > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
            self._entries[key] = (prepared, size)
            self._bytes += size
