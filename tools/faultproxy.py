"""A small fault-injecting TCP proxy for tests and drills, on loopback.

    python -m tether.tools.faultproxy --upstream 127.0.0.1:8700 [--listen 127.0.0.1:0]
                                      [--port-file FILE]

Modes, switched by signals so a test can flip them deterministically:
* pass (start): bytes flow both ways;
* blackhole (SIGUSR1): connections stay open but nothing is forwarded either way, and new
  connections are accepted and then left silent — the partition TCP does not notice;
* heal (SIGUSR2): back to pass; data held during the blackhole is discarded (it was "lost
  on the wire"), which is what a real partition does to in-flight bytes.
SIGTERM/SIGINT stop it. Each direction buffers at most what the socket reads at once
(backpressure through ``drain``), so a slow side cannot grow memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.blackholed = False
        self.healed = asyncio.Event()
        self.healed.set()
        self._tasks: set[asyncio.Task[None]] = set()

    def blackhole(self) -> None:
        self.blackholed = True
        self.healed.clear()

    def heal(self) -> None:
        self.blackholed = False
        self.healed.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.healed.wait()  # while blackholed, a new connection hears nothing
            try:
                async with asyncio.timeout(10):
                    up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except (OSError, TimeoutError):
                return
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._pipe(reader, up_writer))
                    tg.create_task(self._pipe(up_reader, writer))
            except* (OSError, ConnectionError):
                pass
            finally:
                up_writer.close()
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while True:
            data = await src.read(CHUNK)
            if not data:
                with contextlib.suppress(OSError):
                    dst.write_eof()
                return
            if self.blackholed:
                continue  # dropped on the floor
            dst.write(data)
            await dst.drain()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _main(args: argparse.Namespace) -> int:
    up_host, _, up_port = args.upstream.rpartition(":")
    host, _, port = args.listen.rpartition(":")
    proxy = FaultProxy(up_host, int(up_port))
    server = await asyncio.start_server(proxy.handle, host, int(port))
    bound = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The handlers go in before the port file: a test that read the file may signal at once.
    loop.add_signal_handler(signal.SIGUSR1, proxy.blackhole)
    loop.add_signal_handler(signal.SIGUSR2, proxy.heal)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.port_file:
        _write_atomic(Path(args.port_file), f"{bound}\n")
    print(f"faultproxy listening on {host}:{bound} -> {args.upstream}", flush=True)
    await stop.wait()
    server.close()
    await proxy.close()
    await server.wait_closed()
    return 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faultproxy", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
