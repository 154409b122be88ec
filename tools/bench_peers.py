"""Peers the benchmark measures Tether against, run as their own processes.

``python -m tether.tools.bench_peers ws-echo --port-file F``: a raw ``websockets`` server with
no persistence that answers every binary message with a small msgpack ack — the Python
ceiling for "send a frame, get it acknowledged" on this machine.
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
        port = next(iter(server.sockets)).getsockname()[1]
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(port_file)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_peers")
    parser.add_argument("peer", choices=["ws-echo"])
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_serve_ws_echo(args.port_file))
    except ImportError:  # pragma: no cover
        asyncio.run(_serve_ws_echo(args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
