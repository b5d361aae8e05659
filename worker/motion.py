"""Driving motion made once: `motion` jobs, and the cache of driving videos' motion templates.

A motion job reads its driving video's motion (pass 1 alone, `Animator.extract_motion`) and
delivers it as a motion template (.npz, common.motion_template). Every template a worker extracts
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
from pathlib import Path

import redis
import structlog

from common.engine_config import EngineConfig
from common.errors import LivePortraitError
from common.options import AnimationOptions
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
_PREFIX = "motion-cache/"
_CHUNK = 1024 * 1024


def motion_key(video: Path, options: AnimationOptions, engine: EngineConfig) -> str:
    """The cache key of a driving video's motion: its bytes, the motion options, the engine."""
    digest = hashlib.sha256()
    with video.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    settings = {
        "options": {name: getattr(options, name) for name in MOTION_OPTIONS},
        "engine": engine.model_dump(mode="json"),
    }
    tail = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return f"{digest.hexdigest()}-{tail}"


class MotionCache:
    """Motion templates by `motion_key`, in the store, each for `ttl_s` seconds (see the module)."""

    def __init__(self, store: Store, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self.store, self.redis, self.ttl_s = store, client, ttl_s
        self.index = f"{prefix}:motion-cache"

    def get(self, key: str, dest: Path) -> MotionTemplate | None:
        """The cached template of `key` (downloaded to `dest`), or None: not cached, expired or unusable."""
        if self.ttl_s <= 0:
            return None
        try:
            expires = self.redis.zscore(self.index, key)
            if expires is None or expires < time.time():
                return None
            self.store.get(_PREFIX + f"{key}.npz", dest)
            return load_template(dest)
        except (redis.RedisError, StorageError, LivePortraitError) as exc:  # gone, unreachable or broken
            log.warning("motion_cache.miss", key=key, error=str(exc))
            return None

    def put(self, key: str, template: MotionTemplate, work_file: Path) -> None:
        """Keep `template` under `key` for `ttl_s` (written through `work_file`); the expired ones go."""
        if self.ttl_s <= 0:
            return
        try:
            now = time.time()
            for expired in self.redis.zrangebyscore(self.index, "-inf", now):
                name = expired.decode() if isinstance(expired, bytes) else str(expired)
                self.store.delete(_PREFIX + f"{name}.npz")
                self.redis.zrem(self.index, name)
            save_template(work_file, template)
            self.store.put(_PREFIX + f"{key}.npz", work_file)
            self.redis.zadd(self.index, {key: now + self.ttl_s})
        except (redis.RedisError, StorageError) as exc:  # a cache that cannot be written is only slower
            log.warning("motion_cache.not_written", key=key, error=str(exc))
