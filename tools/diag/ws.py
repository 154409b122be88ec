"""``tether diag ws URL``: every step from name to heartbeat, timed and explained.

Steps and exit codes: dns 10, proxy 13, tcp 11, tls 12, upgrade 14, challenge 15, hello 16,
heartbeat 17. Without a node key the probe stops after the challenge (nothing is
authenticated, nothing changes on the controller). With ``--node-key``/``--node-id`` it says
hello as that node: that **supersedes the node's live session** if it has one, so use it
for a node that is not connecting; with ``--state-dir`` it reuses the node's epoch, cursor
and session id so the controller's streams for that node are not reset.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sqlite3
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import connect

from tether.protocol.codec import MSGPACK_SUBPROTOCOL, decode_msgpack, encode_msgpack
from tether.protocol.errors import CloseCode, TetherError
from tether.protocol.frames import Challenge, Goodbye, Heartbeat, HeartbeatAck, Hello, Welcome
from tether.protocol.signing import load_private_key, sign_hello

from .report import Report, StepFailed

EXIT_CODES = {"dns": 10, "tcp": 11, "tls": 12, "proxy": 13, "upgrade": 14, "challenge": 15,
              "hello": 16, "heartbeat": 17}
CLOSE_HINTS = {
    CloseCode.AUTH_FAILED: "the node key is not enrolled on this controller (or the id is "
                           "wrong): enroll it with 'tether node enroll', or check --node-id",
    CloseCode.FORBIDDEN: "the node is disabled on this controller: "
                         "POST /api/v1/nodes/{id}/enable",
    CloseCode.UNSUPPORTED_PROTOCOL: "the controller speaks another protocol version: "
                                    "upgrade the older side",
    CloseCode.RATE_LIMITED: "the controller is overloaded: retry after the retry_after in the "
                            "reason",
    CloseCode.TIMEOUT: "the controller timed out the handshake: a proxy or a slow link is "
                       "delaying frames",
    CloseCode.PROTOCOL_ERROR: "the controller refused a frame: the node's tether version may "
                              "be too old",
}


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str  # ws | wss
    host: str
    port: int
    url: str  # the edge WebSocket URL

    @classmethod
    def parse(cls, raw: str) -> Target:
        parts = urlsplit(raw if "://" in raw else f"http://{raw}")
        scheme = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}.get(parts.scheme)
        if scheme is None or not parts.hostname:
            raise TetherError(f"not a controller URL: {raw!r} (use http(s)://host:port)")
        port = parts.port or (443 if scheme == "wss" else 80)
        host = parts.hostname
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(scheme, host, port, f"{scheme}://{netloc}/v1/edge/connect")


def _proxy_for(target: Target, flag: str | None) -> str | None:
    if flag:
        return flag
    env = urllib.request.getproxies()
    proxy = env.get("https" if target.scheme == "wss" else "http") or env.get("https")
    if proxy and urllib.request.proxy_bypass(target.host):
        return None
    return proxy


async def probe(url: str, *, node_id: str | None = None, node_key: Path | None = None,
                state_dir: Path | None = None, ca_file: str | None = None,
                pins: tuple[str, ...] = (), proxy: str | None = None,
                timeout_s: float = 5.0) -> Report:
    report = Report(exit_codes=EXIT_CODES)
    try:
        await _probe(report, Target.parse(url), node_id, node_key, state_dir, ca_file,
                     pins, proxy, timeout_s)
    except StepFailed:
        pass
    return report


async def _probe(report: Report, target: Target, node_id: str | None,
                 node_key: Path | None, state_dir: Path | None, ca_file: str | None,
                 pins: tuple[str, ...], proxy_flag: str | None, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    with report.step("dns") as step:
        try:
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(target.host, target.port,
                                               type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise StepFailed(f"cannot resolve {target.host}: {exc}",
                             "check the host name and this machine's resolver") from None
        step.detail["addresses"] = sorted({i[4][0] for i in infos})
    proxy = _proxy_for(target, proxy_flag)
    dial_host, dial_port = target.host, target.port
    if proxy:
        with report.step("proxy") as step:
            pu = urlsplit(proxy)
            step.detail["proxy"] = proxy
            try:
                async with asyncio.timeout(timeout_s):
                    reader, writer = await asyncio.open_connection(pu.hostname, pu.port or 80)
                    writer.write(f"CONNECT {target.host}:{target.port} HTTP/1.1\r\nHost: "
                                 f"{target.host}:{target.port}\r\n\r\n".encode())
                    await writer.drain()
                    status = (await reader.readline()).decode(errors="replace").strip()
                writer.close()
            except (OSError, TimeoutError) as exc:
                raise StepFailed(f"proxy {proxy} did not answer: {exc}",
                                 "check HTTPS_PROXY / --proxy and that the proxy runs") from None
            step.detail["answer"] = status
            if " 200" not in status:
                raise StepFailed(f"proxy refused CONNECT: {status!r}",
                                 "the proxy must allow CONNECT to this host and port")
        dial_host, dial_port = pu.hostname or "", pu.port or 80
    with report.step("tcp") as step:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(dial_host, dial_port)
            writer.close()
        except ConnectionRefusedError:
            raise StepFailed(f"connection to {dial_host}:{dial_port} refused",
                             "is the controller running and listening on that port?") from None
        except TimeoutError:
            raise StepFailed(f"no answer from {dial_host}:{dial_port} in {timeout_s:g} s",
                             "a firewall is dropping packets, or the host is down") from None
        except OSError as exc:
            raise StepFailed(f"cannot connect to {dial_host}:{dial_port}: {exc}",
                             "check the route to the controller") from None
        step.detail["connect_ms"] = round((time.perf_counter() - start) * 1000, 3)
    ctx = ssl.create_default_context(cafile=ca_file) if target.scheme == "wss" else None
    if ctx is not None and not proxy:
        with report.step("tls") as step:
            await _tls_step(step, target, ctx, pins, timeout_s)
    kwargs: dict[str, Any] = {"ssl": ctx} if ctx is not None else {}
    with report.step("upgrade") as step:
        try:
            async with asyncio.timeout(timeout_s):
                ws = await connect(target.url, subprotocols=[MSGPACK_SUBPROTOCOL],  # type: ignore[list-item]
                                   compression=None, ping_interval=None, proxy=proxy,
                                   open_timeout=timeout_s, **kwargs)
        except TimeoutError:
            raise StepFailed("the upgrade got no answer", "something accepts connections but "
                             "swallows traffic: a blackholed route, a proxy or a firewall"
                             ) from None
        except websockets.InvalidStatus as exc:
            code = exc.response.status_code
            raise StepFailed(f"HTTP {code} instead of a WebSocket upgrade",
                             "this is not a Tether controller (no /v1/edge/connect), or a "
                             "proxy in between refuses WebSocket upgrades") from None
        except (websockets.InvalidHandshake, OSError) as exc:
            raise StepFailed(f"the WebSocket upgrade failed: {exc}",
                             "this does not look like a Tether controller") from None
        step.detail["subprotocol"] = ws.subprotocol
    try:
        await _session_steps(report, ws, node_id, node_key, state_dir, timeout_s)
    finally:
        await ws.close()


async def _tls_step(step: Any, target: Target, ctx: ssl.SSLContext, pins: tuple[str, ...],
                    timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(target.host, target.port, ssl=ctx,
                                                      server_hostname=target.host)
    except ssl.SSLCertVerificationError as exc:
        raise StepFailed(f"certificate not trusted: {exc.verify_message}",
                         "pass the controller's CA with --ca-file") from None
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        raise StepFailed(f"TLS handshake failed: {exc}", "is the port speaking TLS?") from None
    sslobj = writer.get_extra_info("ssl_object")
    cert = sslobj.getpeercert()
    der = sslobj.getpeercert(binary_form=True) or b""
    pin = hashlib.sha256(der).hexdigest()
    step.detail.update(protocol=sslobj.version(), cipher=sslobj.cipher()[0],
                       subject=dict(x[0] for x in cert.get("subject", ())),
                       not_after=cert.get("notAfter"), sha256=pin)
    writer.close()
    if pins and pin not in {p.lower().replace(":", "") for p in pins}:
        step.detail["pin_match"] = False
        raise StepFailed("the certificate matches no --pin-sha256",
                         "the controller's certificate changed: update the pin if expected")
    if pins:
        step.detail["pin_match"] = True


def _node_state(state_dir: Path | None) -> tuple[int, int, str | None]:
    """(epoch, cmd_applied, session_id) from a node's store, read-only; fresh values
    without one (the controller will then reset that node's streams)."""
    if state_dir is not None and (state_dir / "node.db").exists():
        conn = sqlite3.connect(f"file:{state_dir / 'node.db'}?mode=ro", uri=True)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        finally:
            conn.close()
        return int(meta["evt_epoch"]), int(meta["cmd_applied"]), meta.get("session_id")
    return int.from_bytes(os.urandom(7), "big") + 1, 0, None


async def _session_steps(report: Report, ws: Any, node_id: str | None,
                         node_key: Path | None, state_dir: Path | None,
                         timeout_s: float) -> None:
    with report.step("challenge") as step:
        try:
            async with asyncio.timeout(timeout_s):
                challenge = Challenge.parse(decode_msgpack(await ws.recv()))
        except TimeoutError:
            raise StepFailed("no edge.challenge after the upgrade",
                             "the server is not a Tether controller, or it is stuck") from None
        except (TetherError, websockets.ConnectionClosed) as exc:
            raise StepFailed(f"no valid edge.challenge: {exc}",
                             "the server is not a Tether controller of this version") from None
        step.detail.update(controller_id=challenge.controller_id,
                           protocols=list(challenge.protocols),
                           clock_offset_ms=round(challenge.time_ms - time.time() * 1000, 1))
    if node_key is None or node_id is None:
        return
    with report.step("hello") as step:
        key = load_private_key(await asyncio.to_thread(node_key.read_bytes))
        epoch, applied, session_id = await asyncio.to_thread(_node_state, state_dir)
        hello = Hello(node_id=node_id, sig=sign_hello(key, challenge.nonce,
                                                      challenge.controller_id, node_id),
                      epoch=epoch, acks={"cmd": applied}, session_id=session_id,
                      runtime={"state": "detached", "version": "diag"},
                      capabilities=(), labels={})
        await ws.send(encode_msgpack(hello.frame()))
        try:
            async with asyncio.timeout(timeout_s):
                welcome = Welcome.parse(decode_msgpack(await ws.recv()))
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            raise StepFailed(f"closed with {code}: {exc.rcvd.reason if exc.rcvd else ''}",
                             CLOSE_HINTS.get(code or 0, "see the controller's log")) from None
        except (TimeoutError, TetherError) as exc:
            raise StepFailed(f"no edge.welcome: {exc}", "see the controller's log") from None
        step.detail.update(session_id=welcome.session_id, resumed=welcome.resumed,
                           heartbeat_s=welcome.heartbeat_s, stale_after_s=welcome.stale_after_s,
                           offline_after_s=welcome.offline_after_s)
    with report.step("heartbeat") as step:
        sent = time.perf_counter()
        await ws.send(encode_msgpack(Heartbeat(uptime_s=0.0).frame(id="diag-hb")))
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    frame = decode_msgpack(await ws.recv())
                    if frame.t == HeartbeatAck.TYPE and frame.re == "diag-hb":
                        break
        except (TimeoutError, websockets.ConnectionClosed) as exc:
            raise StepFailed(f"no heartbeat_ack: {exc}",
                             "the session opened but the controller does not answer") from None
        step.detail["rtt_ms"] = round((time.perf_counter() - sent) * 1000, 3)
        await ws.send(encode_msgpack(Goodbye(reason="diag done").frame()))
