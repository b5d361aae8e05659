"""`liveportrait live SOURCE --video FILE -o OUT.mp4` against a gateway and a stand-in live worker."""

from __future__ import annotations

from collections.abc import Callable

import av
import pytest

from engines.demo import head_motion_frames, portrait
from liveportrait.cli import main
from tests.live.conftest import LiveStack
from tests.worker.doubles import write_video


def test_live_command_records_the_animated_frames(
    live_stack: Callable[..., LiveStack], capsys: pytest.CaptureFixture[str]
) -> None:
    stack = live_stack()
    video = write_video(stack.folder / "camera.mp4", list(head_motion_frames(portrait(), 6, size=256)))
    out = stack.folder / "live.mp4"
    status = main(["live", str(stack.source()), "--video", str(video), "-o", str(out), "--url", stack.url])
    printed = capsys.readouterr().out
    assert status == 0, printed
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert 1 <= len(frames) <= 6 and frames[0].shape == (512, 512, 3), printed
    assert f"wrote {out} ({len(frames)} frames)" in printed and "sent 6" in printed
