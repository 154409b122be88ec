"""``tether diag route NODE``: ``diag.ping`` through the controller to the node and back.

Per ping: the round trip seen by the operator, and three hops from the frames' timestamps —
operator -> controller (the command's ``created_ms``), controller -> node (the node's
``received_ms``) and node -> controller (the status applied) — with the node's clock
corrected by the offset its sidecar measures against the controller, and the operator's by
the controller's ``time_ms``. Loss, p50/p99, and whether the node's runtime answered or
only its sidecar holds the session.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime
from typing import Any

import httpx
from websockets.asyncio.client import connect

from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
from tether.protocol.frames import Frame


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))], 3)


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


async def route(url: str, token: str, node_id: str, *, count: int, interval_s: float,
                timeout_s: float = 3.0) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as http:
        node_resp = await http.get(f"/api/v1/nodes/{node_id}")
        if node_resp.status_code == 404:
            return {"ok": False, "error": f"node {node_id!r} is not enrolled"}
        node_resp.raise_for_status()
        node = node_resp.json()
        t0 = time.time() * 1000
        health = (await http.get("/api/v1/health")).json()
        t1 = time.time() * 1000
        operator_offset = health.get("time_ms", (t0 + t1) / 2) - (t0 + t1) / 2
        node_offset = ((node.get("transport") or {}).get("clock_offset_ms")) or 0.0
        runtime = (node.get("runtime") or {}).get("state")
        pings: list[dict[str, Any]] = []
        done: dict[str, float] = {}
        waiters: dict[str, asyncio.Future[None]] = {}
        ws_url = url.replace("http", "ws", 1) + "/ws"
        async with connect(ws_url, subprotocols=[JSON_SUBPROTOCOL]) as ws:  # type: ignore[list-item]
            await ws.send(encode_json(Frame(t="hello", b={"token": token})))
            await ws.recv()
            await ws.send(encode_json(Frame(t="subscribe",
                                            b={"topics": [f"commands:{node_id}"]})))
            while decode_json(await ws.recv()).t != "subscribed":
                pass

            async def reader() -> None:
                while True:
                    data = decode_json(await ws.recv()).b.get("data") or {}
                    if data.get("state") == "succeeded":
                        done[data["command_id"]] = time.time() * 1000
                        fut = waiters.get(data["command_id"])
                        if fut is not None and not fut.done():
                            fut.set_result(None)

            async with asyncio.TaskGroup() as tg:
                read_task = tg.create_task(reader())
                for i in range(count):
                    sent = time.time() * 1000
                    resp = await http.post(f"/api/v1/nodes/{node_id}/commands",
                                           json={"kind": "diag.ping", "ttl_s": timeout_s})
                    cid = resp.json()["command_id"]
                    if cid not in done:
                        waiters[cid] = asyncio.get_running_loop().create_future()
                        try:
                            async with asyncio.timeout(timeout_s):
                                await waiters[cid]
                        except TimeoutError:
                            pings.append({"seq": i, "lost": True})
                            continue
                    cmd = (await http.get(f"/api/v1/commands/{cid}")).json()
                    res = cmd["result"] or {}
                    applied = _ms(cmd["updated_at"])
                    created = res.get("created_ms", _ms(cmd["created_at"]))
                    pings.append({
                        "seq": i, "lost": False, "rtt_ms": round(done[cid] - sent, 3),
                        "operator_to_controller_ms": round(created - (sent + operator_offset),
                                                           3),
                        "controller_to_node_ms": round(res["received_ms"] + node_offset
                                                       - created, 3),
                        "node_to_controller_ms": round(applied - (res["sent_ms"]
                                                                  + node_offset), 3)})
                    await asyncio.sleep(interval_s)
                read_task.cancel()
    answered = [p for p in pings if not p["lost"]]
    rtts = [p["rtt_ms"] for p in answered]
    summary = {
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
    if runtime != "attached":
        summary["answered_by"] = (f"only the sidecar holds the session; the runtime is "
                                  f"{runtime or 'unknown'}, so pings wait for it")
    elif answered:
        summary["answered_by"] = "the node's runtime"
    else:
        summary["answered_by"] = "nobody: the node did not answer"
    return {"ok": bool(answered) and len(answered) == count, "summary": summary,
            "pings": pings}
