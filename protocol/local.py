"""The local link between a node's runtime and its sidecar: length-prefixed MessagePack
frames over a Unix socket (same envelope and codec as the edge; 4-byte big-endian length).

Local frame types (``local.*``) never reach the controller; every other frame is relayed:

* runtime -> sidecar: ``local.attach`` {node_id, epoch, cmd_applied, session_id, runtime,
  capabilities, labels, pid}; ``local.state`` {outbox}; ``local.detach`` {state:
  "detached" | "restarting"}; ``local.goodbye`` {reason} (full stop: the sidecar says
  goodbye and exits); ``local.reconnect`` {epoch} (a new evt epoch: dial again).
* sidecar -> runtime: ``local.attached`` {sidecar}; ``local.refused`` {reason};
  ``local.session`` {connected, welcome?}; ``local.stopped`` {code, reason} (a final close
  code: the node must stop).

:class:`LocalDecoder` is incremental (bytes in, frames out) and bounded.
"""

from __future__ import annotations

import struct

from .codec import MAX_FRAME_BYTES, decode_msgpack, encode_msgpack
from .errors import FrameTooLarge
from .frames import Frame

HEADER = struct.Struct(">I")
LOCAL_OVERHEAD = 64 * 1024  # local frames may wrap an edge frame of max_frame bytes


def encode_local(frame: Frame, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    data = encode_msgpack(frame, max_frame_bytes=max_frame_bytes + LOCAL_OVERHEAD)
    return HEADER.pack(len(data)) + data


class LocalDecoder:
    """Feed bytes with :meth:`feed`; take complete frames from :meth:`frames`.

    Raises FrameTooLarge as soon as a header announces more than the limit (nothing of it
    is buffered) and BadFrame for an undecodable frame."""

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_bytes = max_frame_bytes + LOCAL_OVERHEAD
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        return [frame for frame, _ in self.feed_raw(data)]

    def feed_raw(self, data: bytes) -> list[tuple[Frame, bytes]]:
        """Like :meth:`feed`, each frame with its MessagePack encoding as it arrived (a relay
        can pass those bytes on without encoding the frame again)."""
        self._buf += data
        out: list[tuple[Frame, bytes]] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self.max_bytes:
                raise FrameTooLarge(f"local frame of {size} bytes exceeds {self.max_bytes}")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            payload = bytes(self._buf[HEADER.size:end])
            del self._buf[:end]
            out.append((decode_msgpack(payload, max_frame_bytes=self.max_bytes), payload))
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
