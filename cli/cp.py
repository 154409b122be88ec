"""``tether cp SRC DST``: copy a file between nodes, or between here and a node, over the
media plane (docs/operations.md "tether cp").

Either side is ``NODE:PATH`` (a node id, a colon, a path) or a local path (a local path
with a colon in it is written with a ``/`` before the colon: ``./a:b``).

* node -> node: a grant (``POST /api/v1/rtc/links``), then the command ``file.send`` on the
  source node (durable, audited, policy-checked like any command); the node sends directly
  when ICE connects, else through the controller's relay. The command's result says which.
* here -> node, node -> here: this process is an operator peer over ``/ws`` (as the
  dashboard is): ``rtc.offer`` with a ``file`` data channel, aiortc here, then filexfer's
  ``offer`` (upload) or ``get`` (download). Direct only: the relay is node <-> node.

Node-side paths: the source of a node -> node copy is a path in the node's workspace
(policy rule 6); a destination on a node, and the source of a download, is a plain file
name in its workspace (files there are flat). Exit 0 with the result; 1 with one line
saying what failed (a sha256 mismatch, an offline node, a policy refusal, ICE failing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.protocol.frames import TERMINAL_STATES

from .client import Api, CliError

_NODE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
ICE_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class Place:
    node: str | None  # None: this machine
    path: str

    def __str__(self) -> str:
        return f"{self.node}:{self.path}" if self.node else self.path


def parse_place(text: str) -> Place:
    """``NODE:PATH`` when what precedes the first colon is a node id, else a local path."""
    head, sep, tail = text.partition(":")
    if sep and _NODE.fullmatch(head):
        return Place(head, tail)
    return Place(None, text)


def add_cp_parser(nouns: Any, operator_flags: Callable[..., None]) -> None:
    cp = nouns.add_parser(
        "cp", help="copy a file node to node, or between here and a node (WebRTC)",
        description="Copies SRC to DST; either is NODE:PATH or a local path. Node to node "
                    "goes directly between the nodes when ICE connects, else through the "
                    "controller's relay; here to a node and back is direct only.",
        epilog="exit status: 0 copied (sha256 verified by the receiver); 1 failed (the "
               "reason on stderr); 2 usage.")
    cp.add_argument("src", help="NODE:PATH (in the node's workspace) or a local file")
    cp.add_argument("dst", help="NODE:NAME (a file name in the node's workspace; empty: "
                                "the source's name) or a local path")
    cp.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                    help="give up after this long (default 600)")
    cp.add_argument("--rtc-host-address", action="append", default=[], metavar="IP",
                    help="here <-> node: offer ICE host candidates only from this address "
                         "(repeatable; env TETHER_RTC_HOST_ADDRESSES, comma-separated)")
    cp.add_argument("--ice-timeout", type=float, default=ICE_TIMEOUT_S, metavar="SECONDS",
                    help="here <-> node: how long ICE may take to connect (default 10)")
    operator_flags(cp)


def cp_command(args: argparse.Namespace, api_from: Callable[[argparse.Namespace], Api]
               ) -> int:
    src, dst = parse_place(args.src), parse_place(args.dst)
    if not src.path and src.node:
        raise CliError(f"{args.src!r} names no file on node {src.node!r}", 2)
    if src.node is None and dst.node is None:
        raise CliError("one side must be NODE:PATH (for a local copy use cp)", 2)
    if not args.timeout > 0 or not args.ice_timeout > 0:
        raise CliError("--timeout and --ice-timeout must be positive", 2)
    api = api_from(args)
    if src.node and dst.node:
        if src.node == dst.node:
            raise CliError("the source and destination are the same node; use exec cp", 2)
        result = node_to_node(api, src, dst, args.timeout)
    elif dst.node is not None:  # upload
        local = Path(src.path)
        if not local.is_file():
            raise CliError(f"no file {src.path!r} here")
        result = asyncio.run(_here_and_node(api, dst.node, (local, dst.path or local.name),
                                            None, args))
    else:
        assert src.node is not None
        target = Path(dst.path or ".")
        if target.is_dir():
            target = target / Path(src.path).name
        result = asyncio.run(_here_and_node(api, src.node, None, (src.path, target), args))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"copied {src} -> {dst}: {result['bytes']} bytes in {result['seconds']} s "
              f"({result['mb_per_s']} MB/s), {result['path']}; sha256 {result['sha256']}")
    return 0


# -- node -> node -------------------------------------------------------------------------


def node_to_node(api: Api, src: Place, dst: Place, timeout_s: float) -> dict[str, Any]:
    assert src.node and dst.node
    try:
        link = api.post("/api/v1/rtc/links", json={"a": src.node, "b": dst.node})
    except CliError as exc:
        if exc.code == "node_offline":
            raise CliError(f"cannot copy: {exc}; both nodes must be online",
                           code="node_offline") from None
        raise
    args: dict[str, Any] = {"peer_session_id": link["peer_session_id"], "to_node": dst.node,
                            "src": src.path}
    if dst.path:
        args["dst"] = dst.path
    cmd = api.post(f"/api/v1/nodes/{src.node}/commands",
                   json={"kind": "file.send", "args": args, "offline": "fail"})
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while cmd.get("state") not in TERMINAL_STATES:
        if time.monotonic() > deadline:
            raise CliError(f"no result within {timeout_s:g} s; see 'tether commands show "
                           f"{cmd['command_id']}'", code="request_timeout")
        time.sleep(delay)  # polling a REST resource, backing off to 1 s
        delay = min(1.0, delay * 1.5)
        cmd = api.get(f"/api/v1/commands/{cmd['command_id']}")
    if cmd["state"] != "succeeded":
        raise CliError(f"copy {cmd['state']}: {cmd.get('error') or 'no reason given'} "
                       f"(command {cmd['command_id']})", code=str(cmd["state"]))
    result = dict(cmd.get("result") or {})
    result["command_id"] = cmd["command_id"]
    return result


# -- here <-> node ------------------------------------------------------------------------


async def _here_and_node(api: Api, node: str, upload: tuple[Path, str] | None,
                         download: tuple[str, Path] | None, args: argparse.Namespace
                         ) -> dict[str, Any]:
    from tether.node.rtc.ice import (
        IceConfigError,
        install_host_allowlist,
        parse_host_addresses,
    )

    hosts_flag = args.rtc_host_address or [
        v for v in os.environ.get("TETHER_RTC_HOST_ADDRESSES", "").split(",") if v.strip()]
    try:
        hosts = parse_host_addresses(hosts_flag)
    except IceConfigError as exc:
        raise CliError(exc.message, 2) from None
    if hosts:
        install_host_allowlist(hosts)
    try:
        async with asyncio.timeout(args.timeout):
            return await operator_peer_transfer(api, node, upload=upload, download=download,
                                                ice_timeout_s=args.ice_timeout)
    except TimeoutError:
        raise CliError(f"the copy did not finish within {args.timeout:g} s",
                       code="request_timeout") from None
    finally:
        if hosts:
            install_host_allowlist([])


async def operator_peer_transfer(api: Api, node: str, *,
                                 upload: tuple[Path, str] | None = None,
                                 download: tuple[str, Path] | None = None,
                                 ice_timeout_s: float = ICE_TIMEOUT_S) -> dict[str, Any]:
    """Open an operator peer to ``node`` over ``/ws`` with a ``file`` channel, then send
    ``upload`` (local path, name there) or fetch ``download`` (name there, local path).
    The peer is closed (``rtc.close``) and the connection awaited closed on the way out."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from websockets.asyncio.client import connect

    from tether.node.rtc.filechannel import AiortcFileChannel
    from tether.node.rtc.filexfer import FileEndpoint, FileLimits
    from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
    from tether.protocol.frames import Frame

    psid = f"cp-{secrets.token_hex(8)}"
    pc = RTCPeerConnection()
    channel = pc.createDataChannel("file")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    pc.on("connectionstatechange",
          lambda: opened.set() if pc.connectionState in ("failed", "closed") else None)
    answers: asyncio.Queue[Frame] = asyncio.Queue(maxsize=64)
    workdir: Path | None = None
    reader: asyncio.Task[None] | None = None
    try:
        async with connect(api.ws_url, subprotocols=[JSON_SUBPROTOCOL],  # type: ignore[list-item]
                           open_timeout=10, close_timeout=2, **api.ws_kwargs) as ws:
            await ws.send(encode_json(Frame(t="hello", b={"token": api.token})))
            async with asyncio.timeout(10):
                first = decode_json(await ws.recv())
            if first.t != "welcome":
                raise CliError(f"/ws refused the operator: {first.b.get('message', first.t)}",
                               code=str(first.b.get("code") or "unauthorized"))

            async def read() -> None:  # every frame is read: /ws cuts off a slow reader
                async for raw in ws:
                    frame = decode_json(raw)
                    if frame.t.startswith("rtc.") or frame.t == "error":
                        with contextlib.suppress(asyncio.QueueFull):
                            answers.put_nowait(frame)

            reader = asyncio.create_task(read())
            await pc.setLocalDescription(await pc.createOffer())
            await ws.send(encode_json(Frame(t="rtc.offer", id="cp-offer", b={
                "node_id": node, "peer_session_id": psid, "negotiation_id": 1,
                "sdp": pc.localDescription.sdp, "type": "offer"})))
            async with asyncio.timeout(30):
                while True:
                    got = await answers.get()
                    if got.t == "error" and (got.re == "cp-offer" or
                                             got.b.get("peer_session_id") == psid):
                        code = str(got.b.get("code"))
                        raise CliError(f"node {node!r} refused the peer: "
                                       f"{got.b.get('message')} ({code})", code=code)
                    if got.t == "rtc.answer" and got.b.get("peer_session_id") == psid:
                        break
            await pc.setRemoteDescription(RTCSessionDescription(str(got.b["sdp"]), "answer"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ice_timeout_s):
                    await opened.wait()
            if channel.readyState != "open":
                raise CliError(f"ICE found no direct path to node {node!r} within "
                               f"{ice_timeout_s:g} s (ICE {pc.iceConnectionState}); the "
                               "relay is for node to node only: check --rtc-host-address "
                               "here and on the node, or STUN/TURN", code="ice_failed")
            started = time.monotonic()
            if upload is not None:
                endpoint = FileEndpoint(AiortcFileChannel(channel, low_bytes=0), Path("."),
                                        FileLimits(), serve=False)
                channel.on("message", endpoint.feed)
                channel.on("close", endpoint.connection_lost)
                result = await endpoint.send_file(upload[0], name=upload[1])
            else:
                assert download is not None
                target = download[1]
                # a private directory beside the target: the file appears there verified,
                # then takes the target's name (nothing else in that directory is touched)
                workdir = Path(tempfile.mkdtemp(prefix=".tether-cp-",
                                                dir=target.parent if str(target.parent)
                                                else "."))
                endpoint = FileEndpoint(AiortcFileChannel(channel, low_bytes=0), workdir,
                                        FileLimits(), serve=False)
                channel.on("message", endpoint.feed)
                channel.on("close", endpoint.connection_lost)
                result = await endpoint.fetch(download[0])
                if result.ok and result.path is not None:
                    os.replace(result.path, target)
            seconds = max(time.monotonic() - started, 1e-6)
            await endpoint.aclose()
            with contextlib.suppress(Exception):
                await ws.send(encode_json(Frame(t="rtc.close", b={
                    "node_id": node, "peer_session_id": psid, "negotiation_id": 1,
                    "reason": "tether cp done"})))
    except OSError as exc:
        raise CliError(f"cannot reach {api.ws_url}: {exc}", code="unreachable") from None
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        await pc.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if not result.ok:
        what = "the sha256 did not match" if result.error == "sha256_mismatch" else \
            result.message
        raise CliError(f"copy failed: {result.error}: {what}", code=result.error or "failed")
    return {"path": "direct", "bytes": result.size, "sha256": result.sha256,
            "seconds": round(seconds, 3), "mb_per_s": round(result.size / seconds / 1e6, 2),
            "resumed_from": result.resumed_from}
