"""Driving motion made once: `motion` jobs, and the cache of driving videos' motion templates.

A motion job reads its driving video's motion (pass 1 alone, `Animator.extract_motion`) and
delivers it as a motion template (.npz, common.motion_template). Every template a motion job makes
is also kept in the store by the content of the video it came from, so that a later motion job or
animation driven by the same bytes (with the same motion options, on the same engine) reuses it
instead of running M over every frame again.

The cache is bounded by a lifetime: an entry is `motion-cache/{key}.npz` in the store and a member
of the Redis sorted set `{prefix}:motion-cache` scored by its expiry, `motion_cache_ttl_s` after it
was written (0 turns the cache off). A lookup ignores an expired entry; every write first deletes
the expired ones, so the store holds at most the templates made within one lifetime (plus those
of a worker that stopped before it wrote again; an S3 lifecycle rule on `motion-cache/` can bound
even those). Keys: sha256 of the video's bytes, the options that change its motion
(`MOTION_OPTIONS`) and the engine's load config (weights, backend, precision, detector).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis
import structlog

from common.errors import LivePortraitError
from common.media import SNIFF_BYTES, sniff
from common.options import AnimationOptions
from common.progress import EXTRACTING_MOTION, FINALIZING, ProgressCallback, ProgressEvent
from engines.motion.template import MotionTemplate, load_template, save_template
from service.storage import StorageError, Store

log = structlog.get_logger("worker")

MOTION_OPTIONS = (
    "flag_crop_driving_video",
    "scale_crop_driving_video",
    "vx_ratio_crop_driving_video",
    "vy_ratio_crop_driving_video",
    "det_thresh",
)
"""The animation options that change the motion read from a driving video (its auto-crop, and the
detector threshold of its landmarks)."""
CACHE_PREFIX = "motion-cache/"


class MotionExtractor(Protocol):
    """The engine interface of motion jobs (engines.pipeline.Animator.extract_motion)."""

    def extract_motion(
        self,
        driving: Path,
        options: AnimationOptions,
        *,
        limits: Any = None,
        should_cancel: Callable[[], bool] | None = None,
        progress: ProgressCallback | None = None,
    ) -> MotionTemplate:
        """Pass 1 over a driving video: its per-frame motion (`progress`: the frames read)."""
        ...


@dataclass
class MadeTemplate:
    """A motion job's result: the template file, its frames and frame rate."""

    output: Path
    frames: int
    fps: float


class MotionCache:
    """Motion templates by the content of their driving video (see the module), each kept `ttl_s`.

    `engine` names the loaded engine (its load config as JSON): templates of other weights or
    backends are other entries."""

    def __init__(
        self,
        store: Store,
        client: redis.Redis,
        prefix: str,
        ttl_s: int,
        engine: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.redis, self.ttl_s, self.engine, self.clock = store, client, ttl_s, engine, clock
        self.index = f"{prefix}:motion-cache"

    def key(self, video: Path, options: AnimationOptions) -> str:
        """The entry of a driving video's motion: its bytes, the motion options, the engine."""
        with video.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256")
        given = {"options": {name: getattr(options, name) for name in MOTION_OPTIONS}, "engine": self.engine}
        tail = hashlib.sha256(json.dumps(given, sort_keys=True).encode()).hexdigest()[:16]
        return f"{digest.hexdigest()}-{tail}"

    def get(self, key: str, dest: Path) -> MotionTemplate | None:
        """The cached template of `key` (downloaded to `dest`), or None: not cached, expired or unusable."""
        if self.ttl_s <= 0:
            return None
        try:
            expires = self.redis.zscore(self.index, key)
            if expires is None or expires < self.clock():
                return None
            self.store.get(f"{CACHE_PREFIX}{key}.npz", dest)
            return load_template(dest)
        except (redis.RedisError, StorageError, LivePortraitError) as exc:  # gone, unreachable or broken
            log.warning("motion_cache.miss", key=key, error=str(exc))
            return None

    def put(self, key: str, template_file: Path) -> None:
        """Keep the template file under `key` for `ttl_s`; the expired entries go first."""
        if self.ttl_s <= 0:
            return
        try:
            now = self.clock()
            for expired in self.redis.zrangebyscore(self.index, "-inf", now):
                name = expired.decode() if isinstance(expired, bytes) else str(expired)
                self.store.delete(f"{CACHE_PREFIX}{name}.npz")
                self.redis.zrem(self.index, name)
            self.store.put(f"{CACHE_PREFIX}{key}.npz", template_file)
            self.redis.zadd(self.index, {key: now + self.ttl_s})
        except (redis.RedisError, StorageError) as exc:  # a cache that cannot be written is only slower
            log.warning("motion_cache.not_written", key=key, error=str(exc))


def _is_video(path: Path) -> bool:
    with path.open("rb") as file:
        return (sniff(file.read(SNIFF_BYTES)) or "").startswith("video/")


def make_template(
    extractor: MotionExtractor | None,
    cache: MotionCache,
    driving: Path,
    options: AnimationOptions,
    work_dir: Path,
    *,
    limits: Any,
    progress: ProgressCallback,
    should_cancel: Callable[[], bool],
) -> MadeTemplate:
    """A motion job: the template of the driving video, from the cache, else extracted (and cached)."""
    if extractor is None:
        raise LivePortraitError("unsupported_input", "this worker makes no motion templates")
    if not _is_video(driving):
        raise LivePortraitError("unsupported_input", "a motion job needs a driving video")
    output = work_dir / "motion.npz"
    progress(ProgressEvent(EXTRACTING_MOTION))
    key = cache.key(driving, options)
    template = cache.get(key, output)
    if template is None:
        template = extractor.extract_motion(
            driving, options, limits=limits, should_cancel=should_cancel, progress=progress
        )
        save_template(output, template)
        cache.put(key, output)
    progress(ProgressEvent(FINALIZING))
    return MadeTemplate(output, template.n_frames, template.fps)


def cached_motion(
    cache: MotionCache, driving: Path, options: AnimationOptions, work_dir: Path
) -> MotionTemplate | None:
    """The cached motion of a driving video (None for another input, or a video not cached)."""
    if cache.ttl_s <= 0 or not _is_video(driving):
        return None
    return cache.get(cache.key(driving, options), work_dir / "cached-motion.npz")
