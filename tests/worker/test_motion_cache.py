"""The motion template cache on the real Redis and the local store: keys by content, options and engine;
entries kept for their lifetime, then ignored and deleted by the next write."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.options import AnimationOptions
from service.queue import connect
from service.settings import Settings
from service.storage import make_store
from tests.service.test_motion_inputs import template_bytes
from tests.worker.doubles import moving_frames, write_video
from worker.motion import MotionCache

TTL_S = 3600


def template(tmp_path: Path, name: str, frames: int = 3) -> Path:
    path = tmp_path / name
    path.write_bytes(template_bytes(tmp_path, frames))
    return path


def test_keys_entries_and_their_lifetime(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    now = [1_000_000.0]
    store, client = make_store(settings), connect(settings)
    cache = MotionCache(store, client, settings.queue_prefix, TTL_S, "engine-a", clock=lambda: now[0])
    video = write_video(tmp_path / "a.mp4", moving_frames(4))
    other = write_video(tmp_path / "b.mp4", moving_frames(5))
    options = AnimationOptions()

    key = cache.key(video, options)
    assert key == cache.key(video, AnimationOptions(crf=30, audio="none")), "options that keep the motion"
    assert key != cache.key(video, AnimationOptions(flag_crop_driving_video=True))
    assert key != cache.key(video, AnimationOptions(det_thresh=0.5))
    assert key != cache.key(other, options)
    other_engine = MotionCache(store, client, settings.queue_prefix, TTL_S, "engine-b")
    assert key != other_engine.key(video, options)

    assert cache.get(key, tmp_path / "miss.npz") is None
    first = template(tmp_path, "first.npz")
    cache.put(key, first)
    found = cache.get(key, tmp_path / "hit.npz")
    assert (
        found is not None
        and found.n_frames == 3
        and (tmp_path / "hit.npz").read_bytes() == first.read_bytes()
    )

    now[0] += TTL_S + 1
    assert cache.get(key, tmp_path / "expired.npz") is None, "past its lifetime an entry is not used"
    second = cache.key(other, options)
    cache.put(second, template(tmp_path, "second.npz", frames=5))
    assert not store.exists(f"motion-cache/{key}.npz"), "the next write deletes the expired entries"
    assert client.zrange(cache.index, 0, -1) == [second.encode()]
    assert cache.get(second, tmp_path / "second-hit.npz") is not None

    off = MotionCache(store, client, settings.queue_prefix + "-off", 0, "engine-a")
    off.put(key, first)
    assert off.get(key, tmp_path / "off.npz") is None and client.zcard(off.index) == 0
    client.close()
