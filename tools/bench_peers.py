"""Peers the benchmark measures Tether against, run as their own processes.

``python -m tether.tools.bench_peers PEER --port-file F``, PEER one of:

* ``ws-echo``: a raw ``websockets`` server with no persistence that answers every binary
  message with a small msgpack ack — the Python ceiling for "send a frame, get it
  acknowledged" on this machine;
* ``ws-idle-uvicorn``: uvicorn (``websockets-sansio``, uvloop, no compression, no pings —
  the controller's settings) with one bare WebSocket endpoint that accepts and reads: what
  an idle connection costs the stack the controller is built on, before any Tether state;
* ``ws-idle-websockets``: the same endpoint on ``websockets``' own asyncio server.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import msgpack
from websockets.asyncio.server import ServerConnection, serve


async def _echo_ack(ws: ServerConnection) -> None:
    async for message in ws:
        frame = msgpack.unpackb(message, raw=False)
        await ws.send(msgpack.packb({"t": "edge.ack", "b": {"acks": {"evt": frame["q"]}}}))


async def _serve_ws_echo(port_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(_echo_ack, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        _write_port(port_file, next(iter(server.sockets)).getsockname()[1])
        await stop.wait()


def _write_port(port_file: Path, port: int) -> None:
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(port_file)


async def _read_until_closed(ws: ServerConnection) -> None:
    async for _ in ws:
        pass


async def _serve_idle_websockets(port_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(_read_until_closed, "127.0.0.1", 0, compression=None, max_size=1 << 20,
                     ping_interval=None, backlog=4096) as server:
        _write_port(port_file, next(iter(server.sockets)).getsockname()[1])
        await stop.wait()


def _serve_idle_uvicorn(port_file: Path) -> None:
    import socket

    import uvicorn
    from starlette.websockets import WebSocket

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "websocket":
            return
        ws = WebSocket(scope, receive, send)  # type: ignore[arg-type]
        await ws.accept(subprotocol="tether.v1.msgpack")
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _write_port(port_file, sock.getsockname()[1])
    config = uvicorn.Config(app, loop="uvloop", ws="websockets-sansio", lifespan="off",
                            ws_per_message_deflate=False, ws_ping_interval=None,
                            log_level="warning", backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_peers")
    parser.add_argument("peer", choices=["ws-echo", "ws-idle-uvicorn", "ws-idle-websockets"])
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.peer == "ws-idle-uvicorn":
        _serve_idle_uvicorn(args.port_file)
        return 0
    serve_fn = _serve_ws_echo if args.peer == "ws-echo" else _serve_idle_websockets
    try:
        import uvloop

        uvloop.run(serve_fn(args.port_file))
    except ImportError:  # pragma: no cover
        asyncio.run(serve_fn(args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
