"""`liveportrait live SOURCE --camera N | --video FILE [-o OUT.mp4]`: try a live session from a terminal.

Opens a session on a gateway (service.client), then sends camera or video frames at their own rate
(JPEG) while a thread receives the animated frames (service.live_client); `-o` records them to an
MP4. Prints, every second, the frames sent, received and dropped and the worker's latency. A video
ends the session at its end; a camera at Ctrl-C or after `--seconds`.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from engines.media import VideoWriter
    from service.live_client import LiveConnection

DEFAULT_FPS = 25.0


def _camera(index: int) -> tuple[Iterator[np.ndarray], float]:
    """Frames (RGB) of camera `index` (OpenCV), and its frame rate."""
    import cv2

    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise SystemExit(f"error: camera {index} cannot be opened")
    fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield bgr[..., ::-1]
        finally:
            capture.release()

    return frames(), fps


def _video(path: Path) -> tuple[Iterator[np.ndarray], float]:
    """Frames (RGB) of a video file, paced at its frame rate, and that rate."""
    from engines.media import VideoReader

    reader = VideoReader(path)
    fps = reader.fps or DEFAULT_FPS

    def frames() -> Iterator[np.ndarray]:
        with reader:
            start = time.monotonic()
            for i, rgb in enumerate(reader):
                time.sleep(max(0.0, start + i / fps - time.monotonic()))  # real time, as a camera
                yield rgb

    return frames(), fps


class _Receiver:
    """Takes the session's answers in a thread: counts them, records them, keeps their latencies."""

    def __init__(self, live: LiveConnection, output: Path | None, fps: float) -> None:
        self.live = live
        self.output = output
        self.fps = fps
        self.received = self.dropped = self.errors = 0
        self.latencies: list[float] = []
        self.writer: VideoWriter | None = None
        self.thread = threading.Thread(target=self._run, name="live-receiver", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import cv2
        import numpy as np

        from common.live import Closing, Dropped, ErrorMessage
        from engines.media import VideoWriter
        from service.live_client import Closed, LiveFrame

        while True:
            item = self.live.receive()
            if isinstance(item, LiveFrame):
                self.received += 1
                self.latencies.append(item.stats.latency_ms["worker"])
                if self.output is not None:
                    bgr = cv2.imdecode(np.frombuffer(item.jpeg, np.uint8), cv2.IMREAD_COLOR)
                    if bgr is None:
                        continue
                    rgb = bgr[..., ::-1]
                    if self.writer is None:
                        self.writer = VideoWriter(self.output, self.fps, rgb.shape[1], rgb.shape[0], crf=20)
                    self.writer.write(np.ascontiguousarray(rgb))
            elif isinstance(item, Dropped):
                self.dropped += 1
            elif isinstance(item, ErrorMessage):
                self.errors += 1
                print(f"error [{item.code}]: {item.message}")
            elif isinstance(item, Closing):
                print(f"closing [{item.reason}]: {item.message}")
            elif isinstance(item, Closed):
                return


def cmd_live(args: argparse.Namespace) -> int:
    import cv2

    from service.client import Client
    from service.live_client import LiveConnection

    frames, fps = _camera(args.camera) if args.video is None else _video(Path(args.video))
    options = {"output_kind": args.output_kind, "quality": args.quality, "size": args.size}
    with Client(args.url, args.api_key) as client:
        grant = client.open_live(args.source, options=options)
    sent = 0
    with LiveConnection(grant.websocket_url) as live:
        print(f"session {grant.session_id} ready: source {live.ready.source}, {fps:g} fps; Ctrl-C ends it")
        receiver = _Receiver(live, Path(args.output) if args.output else None, fps)
        start = shown = time.monotonic()
        try:
            for rgb in frames:
                data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                live.send_frame(data)
                sent += 1
                now = time.monotonic()
                if now - shown >= 1:
                    shown = now
                    p50 = statistics.median(receiver.latencies[-50:]) if receiver.latencies else 0.0
                    print(
                        f"sent {sent}  received {receiver.received}  dropped {receiver.dropped}  "
                        f"errors {receiver.errors}  worker latency p50 {p50:.1f} ms"
                    )
                if args.seconds is not None and now - start >= args.seconds:
                    break
        except KeyboardInterrupt:
            pass
        deadline = time.monotonic() + 5
        while receiver.received + receiver.dropped + receiver.errors < sent and time.monotonic() < deadline:
            time.sleep(0.05)  # the last answers on their way
    receiver.thread.join(timeout=10)
    if receiver.writer is not None:
        receiver.writer.close()
        print(f"wrote {args.output} ({receiver.received} frames)")
    print(f"sent {sent}, received {receiver.received}, dropped {receiver.dropped}, errors {receiver.errors}")
    return 0


def add_live_command(
    sub: argparse._SubParsersAction, client_arguments: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register `liveportrait live`; `client_arguments(parser)` adds --url and --api-key."""
    p = sub.add_parser("live", help="animate a portrait live from a camera or a video, through a gateway")
    p.add_argument("source", help="the portrait image")
    drive = p.add_mutually_exclusive_group(required=True)
    drive.add_argument("--camera", type=int, help="camera index (OpenCV)")
    drive.add_argument("--video", help="a video file, played in real time as a camera")
    p.add_argument("-o", "--output", help="record the animated frames to this MP4")
    p.add_argument("--output-kind", choices=["crop", "pasteback", "side_by_side"], default="crop")
    p.add_argument("--size", type=int, help="longest side of the frames sent back")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality of the frames sent back")
    p.add_argument("--seconds", type=float, help="end after this many seconds")
    client_arguments(p)
    p.set_defaults(func=cmd_live)
