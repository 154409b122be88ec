"""``tether diag route NODE``: ``diag.ping`` through the controller to the node and back.

Per ping: the round trip seen by the operator, and three hops from the frames' timestamps —
operator -> controller (the command's ``created_ms``), controller -> node (the node's
``received_ms``) and node -> controller (the status applied) — with the node's clock
corrected by the offset its sidecar measures against the controller, and the operator's by
the controller's ``time_ms``. Loss, p50/p99, whether the node's runtime answered or only
its sidecar holds the session, and for each lost ping the hop it stalled at (read from the
command's state when the ping timed out).

Also home of :class:`ControllerApi`, the REST client every controller-side diag probe
(``diag route``, ``diag controller``) uses: it turns a dead port, a server that is not a
Tether controller, a refused token and a blackholed route into a :class:`StepFailed` that
says what failed and what to check next.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tether.common.terminal import terminal_safe
from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
from tether.protocol.frames import TERMINAL_STATES, Frame

from .report import StepFailed

URL_HINT = "check --url: it should be a controller's base URL, e.g. http://host:8700"
TOKEN_HINT = ("check --token / TETHER_TOKEN: use the controller's <data-dir>/admin.token or "
              "a token it issued")
SWALLOW_HINT = ("the connection opened but nothing came back: a proxy or firewall swallows "
                "traffic, or the controller is stuck (see its log)")
STATUS_HINTS = {403: "this token's role may not do this: use an admin token",
                404: "check the name: 'tether nodes list' shows what the controller knows"}

# A lost ping's command state, read when it timed out -> (the hop it stalled at, why).
LOST_AT = {
    "queued": ("controller -> node", "still queued on the controller: the node took no "
                                     "delivery (no session, a detached runtime, or a link "
                                     "that swallows traffic)"),
    "expired": ("controller -> node", "it expired before the node took it"),
    "delivered": ("node -> controller", "the node took it but its answer did not come back"),
    "running": ("node -> controller", "the node took it but its answer did not come back"),
    "succeeded": ("controller -> operator", "the node answered but the event never reached "
                                            "this operator's /ws stream"),
}


class ApiError(StepFailed):
    """The controller answered with its own error body (``{"error": {code, message}}``)."""

    def __init__(self, message: str, hint: str, *, status: int, code: str) -> None:
        super().__init__(message, hint)
        self.status, self.code = status, code


def _os_reason(exc: BaseException) -> str:
    """The most specific reason in an exception's cause chain, e.g. 'connection refused'
    where httpx only says 'All connection attempts failed'."""
    reason = str(exc) or type(exc).__name__
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError):
            return f"TLS: {cur.reason or cur}"
        if isinstance(cur, OSError) and cur.errno:
            reason = os.strerror(cur.errno).lower()
        cur = cur.__cause__ or cur.__context__
    return reason


class ControllerApi:
    """The controller's REST API as the diag probes call it.

    Invariants: a call returns only a JSON object from something that answers like a Tether
    controller, or raises :class:`StepFailed` (:class:`ApiError` when the controller itself
    refused) — never an httpx exception; each request waits at most ``timeout_s`` per phase
    (connect, write, read), so a blackholed route fails instead of hanging.
    """

    def __init__(self, http: httpx.AsyncClient, url: str, timeout_s: float) -> None:
        self.http, self.url, self.timeout_s = http, url, timeout_s

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, token: str, *, timeout_s: float,
                   verify: ssl.SSLContext | bool = True) -> AsyncIterator[ControllerApi]:
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, verify=verify,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            yield cls(http, url, timeout_s)

    async def get(self, path: str, **kw: Any) -> dict[str, Any]:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> dict[str, Any]:
        return await self.request("POST", path, **kw)

    async def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        where = f"{self.url}{path}"
        try:
            resp = await self.http.request(method, path, **kw)
        except httpx.ConnectTimeout:
            raise StepFailed(f"no TCP connection to {self.url} within {self.timeout_s:g} s",
                             "is the host up? a firewall may be dropping packets; "
                             + URL_HINT) from None
        except httpx.TimeoutException:
            raise StepFailed(f"no answer from {self.url} within {self.timeout_s:g} s",
                             SWALLOW_HINT) from None
        except httpx.ConnectError as exc:
            raise StepFailed(f"cannot reach the controller at {self.url} ({_os_reason(exc)})",
                             f"is the controller running at {self.url}? start one with "
                             "'tether controller serve' or pass --url") from None
        except httpx.HTTPError as exc:  # reset mid-answer, or an answer that is not HTTP
            raise StepFailed(f"the exchange with {self.url} broke ({_os_reason(exc)})",
                             "this does not look like a Tether controller, or something in "
                             "between cuts the connection; " + URL_HINT) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if not (isinstance(error, dict) and isinstance(error.get("code"), str)
                and isinstance(error.get("message"), str)):
            error = None
        status = resp.status_code
        if (status >= 400 and error is None) or (status < 400 and not isinstance(body, dict)):
            raise StepFailed(f"this does not look like a Tether controller "
                             f"(HTTP {status} from {where})", URL_HINT)
        if error is not None and status == 401:
            raise ApiError(f"the token is not accepted by this controller "
                           f"({error['message']}, HTTP 401)", TOKEN_HINT,
                           status=status, code=error["code"])
        if error is not None and status >= 400:
            raise ApiError(f"{error['message']} ({error['code']}, HTTP {status} from "
                           f"{where})", STATUS_HINTS.get(status, "see the controller's log"),
                           status=status, code=error["code"])
        assert isinstance(body, dict)
        return body


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))], 3)


def _number(value: object) -> bool:
    """A finite int or float, not a bool: what a timestamp a node reports must be."""
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


async def _expect(ws: ClientConnection, t: str) -> Frame:
    """Read frames until one of type ``t``; an ``error`` frame is the controller refusing."""
    while True:
        frame = decode_json(await ws.recv())
        if frame.t == t:
            return frame
        if frame.t == "error":
            raise StepFailed(f"the controller refused the /ws stream: "
                             f"{frame.b.get('message')}", TOKEN_HINT)


async def _open_stream(ws_url: str, token: str, node_id: str, timeout_s: float,
                       tls: ssl.SSLContext | None = None) -> ClientConnection:
    """/ws, said hello to and subscribed to the node's command events within ``timeout_s``;
    raises StepFailed (and leaves nothing open) when it cannot be."""
    ws: ClientConnection | None = None
    try:
        async with asyncio.timeout(timeout_s):
            ws = await connect(ws_url, subprotocols=[JSON_SUBPROTOCOL],  # type: ignore[list-item]
                               open_timeout=timeout_s,
                               **({"ssl": tls} if tls and ws_url.startswith("wss") else {}))
            await ws.send(encode_json(Frame(t="hello", b={"token": token})))
            await _expect(ws, "welcome")
            await ws.send(encode_json(Frame(t="subscribe",
                                            b={"topics": [f"commands:{node_id}"]})))
            await _expect(ws, "subscribed")
        return ws
    except TimeoutError:
        failure = StepFailed(f"no answer on {ws_url} within {timeout_s:g} s",
                             "the REST API answered but /ws did not: " + SWALLOW_HINT)
    except websockets.ConnectionClosed as exc:
        reason = f"{exc.rcvd.reason} ({exc.rcvd.code})" if exc.rcvd else str(exc)
        failure = StepFailed(f"the controller closed {ws_url}: {reason}", TOKEN_HINT)
    except websockets.InvalidStatus as exc:
        failure = StepFailed(f"HTTP {exc.response.status_code} instead of a WebSocket "
                             f"upgrade on {ws_url}", "a proxy in between refuses WebSocket "
                                                     "upgrades, or " + URL_HINT)
    except (websockets.InvalidHandshake, OSError) as exc:
        failure = StepFailed(f"cannot open {ws_url}: {exc}",
                             "a proxy in between may not pass WebSocket upgrades; " + URL_HINT)
    except StepFailed as exc:
        failure = exc
    if ws is not None:
        await ws.close()
    raise failure


OFFSET_SAMPLES = 5


async def _clock_offset(api: ControllerApi) -> tuple[dict[str, Any], float]:
    """The controller's health document and its clock's offset from ours (ms), NTP-style:
    of a few ``/api/v1/health`` round trips, the fastest one's midpoint, so the error is at
    most half that round trip (the first request also pays for connecting: never use it
    alone)."""
    best: tuple[float, float] | None = None  # (rtt, offset)
    health: dict[str, Any] = {}
    for _ in range(OFFSET_SAMPLES):
        t0 = time.time() * 1000
        health = await api.get("/api/v1/health")  # unauthenticated: is it a controller?
        t1 = time.time() * 1000
        if "controller_id" not in health or "time_ms" not in health:
            return health, 0.0
        sample = (t1 - t0, float(health["time_ms"]) - (t0 + t1) / 2)
        if best is None or sample[0] < best[0]:
            best = sample
    return health, 0.0 if best is None else best[1]


async def route(url: str, token: str, node_id: str, *, count: int, interval_s: float,
                timeout_s: float = 3.0,
                verify: ssl.SSLContext | bool = True) -> dict[str, Any]:
    """Ping ``node_id`` ``count`` times; returns ``{"ok", "summary", "pings"}``.

    Raises StepFailed when the probe cannot run at all (controller unreachable or not a
    controller, token refused, node not enrolled, /ws unusable). Every wait — each HTTP
    phase, opening /ws, each ping — is bounded by ``timeout_s``; a ping that times out is
    ``lost`` and names the hop it stalled at, and ``ok`` is true only when all answered.
    """
    async with ControllerApi.open(url, token, timeout_s=timeout_s, verify=verify) as api:
        health, operator_offset = await _clock_offset(api)
        if "controller_id" not in health:
            raise StepFailed(f"this does not look like a Tether controller (no controller_id "
                             f"from {url}/api/v1/health)", URL_HINT)
        try:
            node = await api.get(f"/api/v1/nodes/{node_id}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            raise StepFailed(f"node {node_id!r} is not enrolled on {url}",
                             STATUS_HINTS[404]) from None
        node_offset = ((node.get("transport") or {}).get("clock_offset_ms")) or 0.0
        runtime = (node.get("runtime") or {}).get("state")
        pings: list[dict[str, Any]] = []
        done: dict[str, float] = {}
        waiters: dict[str, asyncio.Future[None]] = {}
        ws_url = url.replace("http", "ws", 1) + "/ws"
        ws = await _open_stream(ws_url, token, node_id, timeout_s,
                                verify if isinstance(verify, ssl.SSLContext) else None)

        async def reader() -> None:
            """Notes when each command ends (any terminal state) and wakes its waiter."""
            while True:
                try:
                    frame = decode_json(await ws.recv())
                except websockets.ConnectionClosed as exc:
                    raise StepFailed(f"the controller closed {ws_url} mid-run: {exc}",
                                     "see the controller's log") from None
                data = frame.b.get("data") or {}
                cid = data.get("command_id")
                if isinstance(cid, str) and data.get("state") in TERMINAL_STATES:
                    done.setdefault(cid, time.time() * 1000)
                    fut = waiters.get(cid)
                    if fut is not None and not fut.done():
                        fut.set_result(None)

        async def ping(seq: int) -> dict[str, Any]:
            sent = time.time() * 1000
            cid = (await api.post(f"/api/v1/nodes/{node_id}/commands",
                                  json={"kind": "diag.ping", "ttl_s": timeout_s})
                   )["command_id"]
            if cid not in done:
                waiters[cid] = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(timeout_s):
                        await waiters[cid]
                except TimeoutError:
                    pass
            cmd = await api.get(f"/api/v1/commands/{cid}")
            if cid not in done or cmd["state"] != "succeeded":
                hop, why = LOST_AT.get(cmd["state"], (
                    "node", f"the node ended it {cmd['state']}: {cmd.get('error') or '-'}"))
                return {"seq": seq, "lost": True, "state": cmd["state"], "lost_at": hop,
                        "why": why}
            res = cmd.get("result") if isinstance(cmd.get("result"), dict) else {}
            applied = _ms(cmd["updated_at"])
            created = res.get("created_ms", _ms(cmd["created_at"]))
            # what the node answered is a peer's data: numbers, or this ping says why not
            if not all(_number(v) for v in (res.get("received_ms"), res.get("sent_ms"),
                                            created)):
                return {"seq": seq, "lost": True, "state": cmd["state"], "lost_at": "node",
                        "why": "the node's diag.ping result lacks numeric received_ms, "
                               f"sent_ms and created_ms: {str(res)[:200]}"}
            return {
                "seq": seq, "lost": False, "rtt_ms": round(done[cid] - sent, 3),
                "operator_to_controller_ms": round(created - (sent + operator_offset), 3),
                "controller_to_node_ms": round(res["received_ms"] + node_offset - created, 3),
                "node_to_controller_ms": round(applied - (res["sent_ms"] + node_offset), 3)}

        try:
            async with asyncio.TaskGroup() as tg:
                read_task = tg.create_task(reader())
                for i in range(count):
                    pings.append(await ping(i))
                    if i + 1 < count:
                        await asyncio.sleep(interval_s)
                read_task.cancel()
        except* StepFailed as group:
            raise group.exceptions[0] from None
        finally:
            await ws.close()
    return {"ok": count > 0 and all(not p["lost"] for p in pings),
            "summary": _summary(node_id, node, runtime, pings, count, node_offset,
                                operator_offset), "pings": pings}


def _summary(node_id: str, node: dict[str, Any], runtime: str | None,
             pings: list[dict[str, Any]], count: int, node_offset: float,
             operator_offset: float) -> dict[str, Any]:
    answered = [p for p in pings if not p["lost"]]
    rtts = [p["rtt_ms"] for p in answered]
    lost_at: dict[str, int] = {}
    for p in pings:
        if p["lost"]:
            lost_at[p["lost_at"]] = lost_at.get(p["lost_at"], 0) + 1
    summary: dict[str, Any] = {
        "node_id": node_id, "liveness": node.get("liveness"), "runtime": runtime,
        "sent": count, "answered": len(answered),
        "loss_percent": round(100 * (count - len(answered)) / count, 1) if count else 0.0,
        "rtt_p50_ms": _pct(rtts, 50), "rtt_p99_ms": _pct(rtts, 99),
        "node_clock_offset_ms": node_offset,
        "operator_clock_offset_ms": round(operator_offset, 3),
        "hops_median_ms": {h: round(statistics.median(p[h] for p in answered), 3)
                           for h in ("operator_to_controller_ms", "controller_to_node_ms",
                                     "node_to_controller_ms")} if answered else None,
    }
    if lost_at:
        summary["lost_at"] = lost_at
    if runtime != "attached":
        summary["answered_by"] = (f"only the sidecar holds the session; the runtime is "
                                  f"{runtime or 'unknown'}, so pings wait for it")
    elif answered:
        summary["answered_by"] = "the node's runtime"
    else:
        first = next(p for p in pings if p["lost"]) if pings else None
        summary["answered_by"] = ("nobody: " + (f"the pings stalled at {first['lost_at']}: "
                                                f"{first['why']}" if first else "no pings"))
    return summary


def route_table(result: dict[str, Any]) -> str:
    """``route``'s result as text: one line per ping, then the summary."""
    lines = []
    for p in result["pings"]:
        lines.append(f"ping {p['seq']:>3}  lost at {p['lost_at']} ({p['state']})" if p["lost"]
                     else f"ping {p['seq']:>3}  rtt {p['rtt_ms']:>8.3f} ms  op->ctl "
                     f"{p['operator_to_controller_ms']:>7.3f}  ctl->node "
                     f"{p['controller_to_node_ms']:>7.3f}  node->ctl "
                     f"{p['node_to_controller_ms']:>7.3f}")
    lines += [f"{key:<26} {value}" for key, value in result["summary"].items()]
    return "\n".join(terminal_safe(line) for line in lines)  # a node's error is in `why`
