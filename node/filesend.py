"""The ``file.send`` command (``tether cp node:a:SRC node:b:DST``, docs/protocol.md §6):
this node sends one file of its workspace to another node, directly over a WebRTC peer
when ICE connects, else through the controller's relay (node/rtc/relay.py).

Args (checked at the controller, ``protocol/deliver.py``, and again here):
``peer_session_id`` (the peer an ``rtc.link`` granted, ``POST /api/v1/rtc/links``),
``to_node``, ``src`` (a file in this node's workspace, policy rule 6), ``dst`` (a plain
file name in the other node's workspace; default: ``src``'s name).

Steps: wait (at most :data:`GRANT_WAIT_S`) for the grant; open the peer (this node offers,
the other is the node end) and wait for ICE ``connected`` and the ``file`` channel open,
at most the node's ``rtc_ice_timeout_s``; send over it. When ICE fails or times out, or
the direct channel is lost mid-transfer, this node's peer is closed without telling the
other end (an ``rtc.close`` would end the grant the relay needs) and the transfer goes
(on, resumed from what the receiver holds) through ``rtc.relay``; the relay's first frame
closes the other node's WebRTC peer. Either way the receiver checks the sha256 before the
file appears. The result: ``{path: direct|relay, bytes, sha256, seconds, mb_per_s,
transfer_seconds, resumed_from, name, to_node}`` (``seconds`` from the grant to the
verdict, ICE included; ``transfer_seconds`` on the path that carried the file).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.protocol import filexfer as fx
from tether.protocol.deliver import file_send_args
from tether.protocol.errors import BadFrame, TetherError

from .policy import Policy, Refused

GRANT_WAIT_S = 5.0
POLL_S = 0.05


class FileSendFailed(TetherError):
    default_code = "internal"


@dataclass(frozen=True, slots=True)
class FileSend:
    peer_session_id: str
    to_node: str
    src: str
    dst: str

    @classmethod
    def parse(cls, args: dict[str, Any]) -> FileSend:
        """Raises BadFrame naming the field."""
        checked = file_send_args(args)
        src = str(checked["src"])
        dst = str(checked.get("dst") or Path(src).name)
        try:
            fx.safe_name(dst)
        except fx.FileXferError as exc:
            raise BadFrame(f"field 'dst': {exc.message}") from None
        return cls(str(checked["peer_session_id"]), str(checked["to_node"]), src, dst)


def check_file_send(policy: Policy, workspace: Path, kind: str, args: dict[str, Any]
                    ) -> str | None:
    """The rule refusing a ``file.send``'s args (policy rule 6), or None."""
    if kind != "file.send":
        return None
    try:
        FileSend.parse(args)
        policy.file_source(args.get("src"), workspace)
    except BadFrame as exc:
        return exc.message
    except Refused as exc:
        return exc.message
    return None


async def run_file_send(*, args: dict[str, Any], policy: Policy, workspace: Path,
                        rtc: Callable[[], Awaitable[Any]], relay: Any,
                        ice_timeout_s: float) -> dict[str, Any]:
    """Send the file (module docstring); the result, or FileSendFailed with why.
    ``rtc()`` gives the running RtcManager, ``relay`` is the RelayManager."""
    try:
        req = FileSend.parse(args)
        path = policy.file_source(req.src, workspace)
    except (BadFrame, Refused) as exc:
        raise FileSendFailed(exc.message, code="invalid_request") from None
    if not path.is_file():
        raise FileSendFailed(f"no file {req.src!r} in the workspace", code="not_found")
    to = f"node:{req.to_node}"
    grant = await relay.wait_grant(req.peer_session_id, to, GRANT_WAIT_S)
    if grant is None:
        raise FileSendFailed(f"no rtc.link grant for peer {req.peer_session_id!r} with "
                             f"{to} reached this node (POST /api/v1/rtc/links first)",
                             code="forbidden")
    started = time.monotonic()
    manager = await rtc()
    peer = await manager.open_peer(to, req.to_node, req.peer_session_id)
    result = None
    how = "direct"
    carried_from = time.monotonic()  # when the path that carried the file started
    if await _connected(peer, ice_timeout_s):
        carried_from = time.monotonic()
        result = await peer.file.send_file(path, name=req.dst)
        if result.ok:
            await manager.finish(peer, "file.send done", tell=True)
    if result is None or (not result.ok and result.error in ("connection_lost",
                                                             "request_timeout")):
        why = ("ICE found no direct path within " f"{ice_timeout_s:g} s" if result is None
               else f"the direct channel failed ({result.error})")
        await manager.finish(peer, f"{why}; the relay takes over", tell=False)
        how = "relay"
        carried_from = time.monotonic()
        endpoint = relay.open(req.peer_session_id)
        try:
            result = await endpoint.send_file(path, name=req.dst)
        finally:
            await endpoint.aclose()
            await relay.close(req.peer_session_id, "file.send done")
    elif not result.ok:
        await manager.finish(peer, f"file.send failed: {result.error}", tell=True)
    if not result.ok:
        raise FileSendFailed(f"the transfer failed over the {how} path: {result.error}: "
                             f"{result.message}", code=result.error or "internal")
    now = time.monotonic()
    seconds = max(now - started, 1e-6)
    return {"path": how, "bytes": result.size, "sha256": result.sha256,
            "seconds": round(seconds, 3), "mb_per_s": round(result.size / seconds / 1e6, 2),
            "transfer_seconds": round(max(now - carried_from, 1e-6), 3),
            "resumed_from": result.resumed_from, "name": req.dst, "to_node": req.to_node}


async def _connected(peer: Any, timeout_s: float) -> bool:
    """True once the peer's ICE is connected and its file channel open, within
    ``timeout_s``; False when it failed or the time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        channel = peer.channels.get("file")
        if peer.pc.connectionState in ("failed", "closed") or peer.closed.is_set():
            return False
        if peer.pc.connectionState == "connected" and channel is not None \
                and channel.readyState == "open" and peer.file is not None:
            return True
        await asyncio.sleep(POLL_S)
    return False
