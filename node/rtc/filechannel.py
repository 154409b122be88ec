"""The transports the ``file`` subflow (:mod:`.filexfer`) runs over: the
:class:`FileChannel` interface and its aiortc data-channel implementation. A relay (the
controller's ``rtc.relay``) plugs in by implementing :class:`FileChannel` and calling the
endpoint's ``feed`` / ``connection_lost``."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class FileChannel(Protocol):
    """The transport a :class:`FileEndpoint` sends on: an aiortc data channel
    (:class:`AiortcFileChannel`) or a relay. Received messages go the other way, into
    :meth:`FileEndpoint.feed` (and the end of the channel into
    :meth:`FileEndpoint.connection_lost`), called by whoever reads the transport."""

    def send(self, message: bytes | str) -> None:
        """Queue one message; raises ConnectionError once the channel is closed."""

    @property
    def buffered_amount(self) -> int:
        """Bytes queued and not yet handed to the network."""

    async def wait_buffered_low(self) -> None:
        """Return once :attr:`buffered_amount` is at or below the channel's low threshold;
        raises ConnectionError if the channel closes meanwhile."""

    def close(self) -> None: ...


class AiortcFileChannel:
    """:class:`FileChannel` over an aiortc ``RTCDataChannel``: ``bufferedAmountLowThreshold``
    is set to ``low_bytes`` and the ``bufferedamountlow`` event wakes the sender."""

    def __init__(self, channel: Any, *, low_bytes: int) -> None:
        self._channel = channel
        self._low = asyncio.Event()
        channel.bufferedAmountLowThreshold = low_bytes
        channel.on("bufferedamountlow", self._low.set)
        channel.on("close", self._low.set)

    def send(self, message: bytes | str) -> None:
        if self._channel.readyState != "open":
            raise ConnectionError("the file channel is closed")
        self._channel.send(message)

    @property
    def buffered_amount(self) -> int:
        return int(self._channel.bufferedAmount)

    async def wait_buffered_low(self) -> None:
        while self._channel.bufferedAmount > self._channel.bufferedAmountLowThreshold:
            if self._channel.readyState != "open":
                raise ConnectionError("the file channel is closed")
            self._low.clear()
            await self._low.wait()

    def close(self) -> None:
        self._channel.close()
