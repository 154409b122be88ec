"""What the node sends on its video transceiver: a synthetic test pattern (default), a
configured source through aiortc's ``MediaPlayer`` (a file or a device), or what it
receives, looped back through ``MediaRelay``.

The test pattern is cheap on purpose (the node is not a media server): 320x240 at 15 fps,
moving colour bars drawn by numpy rolls of one precomputed row, no per-pixel Python.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import av
from aiortc import MediaStreamTrack, VideoStreamTrack
from aiortc.contrib.media import MediaPlayer, MediaRelay

PATTERN_WIDTH = 320
PATTERN_HEIGHT = 240
PATTERN_FPS = 15
VIDEO_CLOCK = 90_000
LOOP_WAIT_S = 1 / PATTERN_FPS

# Eight bars (white, yellow, cyan, green, magenta, red, blue, black) as (Y, U, V).
_BARS = ((235, 128, 128), (210, 16, 146), (170, 166, 16), (145, 54, 34),
         (106, 202, 222), (81, 90, 240), (41, 240, 110), (16, 128, 128))


def _bar_rows(width: int) -> tuple[bytes, bytes, bytes]:
    """One row of each plane (Y at ``width``, U and V at half), twice over, so a moving
    window is one slice."""
    ys, us, vs = bytearray(), bytearray(), bytearray()
    for x in range(width):
        y, u, v = _BARS[x * len(_BARS) // width]
        ys.append(y)
        if x % 2 == 0:
            us.append(u)
            vs.append(v)
    return bytes(ys) * 2, bytes(us) * 2, bytes(vs) * 2


class TestPatternTrack(VideoStreamTrack):
    """Moving colour bars, ``PATTERN_FPS`` frames a second (paced by ``recv``, as
    aiortc's own ``VideoStreamTrack`` is); ``frames_sent`` counts what it produced.
    A frame is three byte slices repeated per row: no per-pixel Python."""

    __test__ = False  # not a pytest class, whatever its name says

    def __init__(self, *, width: int = PATTERN_WIDTH, height: int = PATTERN_HEIGHT,
                 fps: int = PATTERN_FPS) -> None:
        super().__init__()
        self._width, self._height, self._fps = width - width % 2, height - height % 2, fps
        self._rows = _bar_rows(self._width)
        self._t0: float | None = None
        self._pts = 0
        self.frames_sent = 0

    async def recv(self) -> av.VideoFrame:
        step = VIDEO_CLOCK // self._fps
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            self._pts += step
            wait = self._t0 + self._pts / VIDEO_CLOCK - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # pacing, not synchronisation
        frame = av.VideoFrame(self._width, self._height, "yuv420p")
        shift = (self.frames_sent * 4) % self._width
        for index, plane in enumerate(frame.planes):
            row = self._rows[index]
            width = self._width if index == 0 else self._width // 2
            height = self._height if index == 0 else self._height // 2
            start = shift if index == 0 else shift // 2
            line = row[start:start + width] + bytes(plane.line_size - width)
            plane.update(line * height)
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.frames_sent += 1
        return frame


class LoopbackTrack(VideoStreamTrack):
    """``loopback`` mode's one video track, kept on the sender for the peer's life: the
    other end's video while :meth:`follow` is given it (its offer sends video: the camera
    is on), the test pattern otherwise (camera off, or not yet). Switching never changes
    the sender's track: aiortc's sender waits in ``recv`` of the track it holds, and a
    relayed track stopped under it would leave that wait hanging, or end the sender.

    Rule: ``recv`` never waits on the other end's video longer than one pattern frame
    (:data:`LOOP_WAIT_S`) before looking at the mode again, and the frames' ``pts`` are
    this track's own clock, so the two sources' timestamps never go back. The relayed
    video is subscribed unbuffered (the latest frame only): nothing queues here, through
    the relay that already reads that track (two relays reading one track would each get
    a share of its frames)."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self._pattern = TestPatternTrack()
        self._received: MediaStreamTrack | None = None
        self._source: MediaStreamTrack | None = None
        self._t0 = time.monotonic()

    @property
    def looping(self) -> bool:
        return self._source is not None

    def follow(self, received: MediaStreamTrack | None, relay: MediaRelay) -> None:
        """Loop ``received`` back through ``relay`` (None: send the pattern). Idempotent."""
        if received is self._received:
            return
        old, self._received = self._source, received
        self._source = None if received is None else relay.subscribe(received,
                                                                      buffered=False)
        if old is not None:
            old.stop()
        if received is None:
            self._pattern = TestPatternTrack()  # a fresh clock: no burst to catch up

    async def recv(self) -> av.VideoFrame:
        while True:
            source = self._source
            if source is None:
                frame = await self._pattern.recv()
                break
            try:
                async with asyncio.timeout(LOOP_WAIT_S):
                    frame = await source.recv()
                break
            except TimeoutError:
                continue  # the camera may have stopped: look at the mode again
            except Exception:  # MediaStreamError: the other end's track ended
                if self._source is source:
                    self._received = self._source = None
                    self._pattern = TestPatternTrack()
        frame.pts = int((time.monotonic() - self._t0) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame

    def stop(self) -> None:
        if self._source is not None:
            self._source.stop()
        super().stop()


class VideoSource:
    """Hands out the track the video transceiver sends, per the node's setting:
    ``pattern`` (default), ``loopback`` (:class:`LoopbackTrack`: what the peer sends,
    relayed back, while its offers send video; the pattern otherwise), or anything else:
    a file or device for ``MediaPlayer`` (``format`` and ``options`` as ``MediaPlayer``
    takes them, e.g. ``v4l2``)."""

    def __init__(self, setting: str = "pattern", *, player_format: str | None = None,
                 player_options: dict[str, str] | None = None) -> None:
        self.setting = setting
        self._format = player_format
        self._options = player_options
        self._relay = MediaRelay()
        self._player: MediaPlayer | None = None

    def track(self, received: MediaStreamTrack | None) -> MediaStreamTrack:
        if self.setting == "loopback":
            return LoopbackTrack()  # the peer has it follow what it receives
        if self.setting not in ("pattern", "loopback"):
            if self._player is None:
                self._player = MediaPlayer(self.setting, format=self._format,
                                           options=self._options)
            if self._player.video is not None:
                return self._relay.subscribe(self._player.video)
        return TestPatternTrack()

    def close(self) -> None:
        player, self._player = self._player, None
        if player is not None:
            for track in (player.video, player.audio):
                if track is not None:
                    track.stop()


def describe(track: Any) -> str:
    if isinstance(track, LoopbackTrack):
        return "loopback" if track.looping else "pattern"
    if isinstance(track, TestPatternTrack):
        return "pattern"
    return "source" if track is not None else "none"
