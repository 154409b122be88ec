"""Rule 5 of common/http_deadlines.py: a deadline blames the client only for bytes it has not
sent. On a loop that lags, timers run before sockets are read, so a request can sit unread
when its deadline fires; the client must not get a 408 (or a keep-alive close) for it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tether.common.http_deadlines import MAX_GRACES, DeadlineH11Protocol, has_unread_bytes


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def is_closing(self) -> bool:
        return False


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_unread_bytes_are_seen_without_being_consumed(
        pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    assert not has_unread_bytes(_Transport(server))
    client.sendall(b"GET / HTTP/1.1\r\n")
    assert has_unread_bytes(_Transport(server))
    assert server.recv(100) == b"GET / HTTP/1.1\r\n"  # still there to be read
    assert not has_unread_bytes(SimpleNamespace(get_extra_info=lambda name: None))  # type: ignore[arg-type]


async def test_a_deadline_that_fires_over_unread_bytes_grants_grace_not_a_408(
        pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    expired: list[bool] = []
    proto = SimpleNamespace(_graces=0, transport=_Transport(server), _deadline=None,
                            loop=asyncio.get_running_loop(),
                            _expired=lambda: expired.append(True), _late=lambda: None)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # sent in time, not yet read
    DeadlineH11Protocol._late(proto)  # type: ignore[arg-type]
    assert expired == [] and proto._graces == 1 and proto._deadline is not None
    proto._deadline.cancel()
    server.recv(100)  # the loop read it: nothing unread, a late client is late
    DeadlineH11Protocol._late(proto)  # type: ignore[arg-type]
    assert expired == [True]


async def test_grace_is_bounded_so_a_trickle_cannot_hold_a_socket_forever(
        pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    expired: list[bool] = []
    proto = SimpleNamespace(_graces=MAX_GRACES, transport=_Transport(server), _deadline=None,
                            loop=asyncio.get_running_loop(),
                            _expired=lambda: expired.append(True))
    client.sendall(b"G")
    DeadlineH11Protocol._late(proto)  # type: ignore[arg-type]
    assert expired == [True]
