"""The ``fleet_page`` benchmark: the dashboard's fleet page in real Chromium over a large
simulated fleet (issue 13: 5,000 nodes).

One controller process; ``nodes`` simulated nodes (:class:`~tether.tools.fleet.Fleet`)
online; headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) signs in.

* ``first_paint_ms``: from the sign-in click until the fleet page shows its rows and counts
  every node (the whole ``nodes`` snapshot received, merged and the first rows painted).
* ``liveness_to_dom_p99_ms`` (and p50): ``rounds`` times, one node whose row is on screen
  drops its session and dials back; each liveness change (stale, then online) is timed from
  the event's ``at_ms`` (the controller's clock when it published) to the moment the row's
  ``data-liveness`` attribute changed in the page (a MutationObserver; the same machine's
  clock). A change the page never showed (the node was back before the next frame) gives
  no sample; ``samples`` says how many there were.

When Playwright or Chromium is missing, the rows carry no value and a note saying why.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
from tether.protocol.frames import Frame

from .bench_util import ControllerProcess, percentile, row
from .fleet import Fleet

CHROMIUM = "/usr/bin/chromium"
VISIBLE = 10  # the triggers are among the first rows (sorted by id), on screen at the top

# Installed in the page: every change of a row's data-liveness, with the wall clock.
_OBSERVE = """() => {
    window.__changes = [];
    const list = document.querySelector(".vlist");
    new MutationObserver((records) => {
        const t = Date.now();
        for (const r of records) {
            window.__changes.push([r.target.dataset.nodeId, r.target.dataset.liveness, t]);
        }
    }).observe(list, {subtree: true, attributes: true, attributeFilter: ["data-liveness"]});
}"""


@dataclass(frozen=True)
class PagePlan:
    nodes: int
    rounds: int


PAGE_PLANS = {"tiny": PagePlan(nodes=50, rounds=4), "quick": PagePlan(nodes=1000, rounds=20),
              "full": PagePlan(nodes=5000, rounds=50)}


def _unavailable(plan: PagePlan, why: str) -> list[dict[str, Any]]:
    return [row("fleet_page", "tether", metric, None, "ms", nodes=plan.nodes, note=why)
            for metric in ("first_paint_ms", "liveness_to_dom_p99_ms")]


async def _events(url: str, token: str, wanted: set[str],
                  seen: dict[tuple[str, str], list[float]]) -> None:
    """Record at_ms of every liveness carried by a ``nodes`` event about ``wanted``."""
    ws: ClientConnection = await connect(url.replace("http", "ws", 1) + "/ws", open_timeout=30,
                                         subprotocols=[JSON_SUBPROTOCOL],  # type: ignore[list-item]
                                         max_size=None)
    try:
        await ws.send(encode_json(Frame(t="hello", b={"token": token})))
        await ws.send(encode_json(Frame(t="subscribe", id="s", b={"topics": ["nodes"]})))
        while True:
            frame = decode_json(await ws.recv(), max_frame_bytes=1 << 30)
            data = frame.b.get("data") if frame.t == "event" else None
            if isinstance(data, dict) and data.get("node_id") in wanted \
                    and isinstance(data.get("liveness"), str):
                seen.setdefault((data["node_id"], data["liveness"]), []).append(
                    float(frame.b["at_ms"]))
    finally:
        await ws.close()


def _latencies(changes: list[list[Any]], seen: dict[tuple[str, str], list[float]]
               ) -> list[float]:
    """Each DOM change matched to the latest event for that node and state at or before it
    (a 5 ms allowance for two clocks read on one machine)."""
    out = []
    for node_id, liveness, t_dom in changes:
        before = [at for at in seen.get((node_id, liveness), []) if at <= t_dom + 5]
        if before:
            out.append(max(0.0, t_dom - max(before)))
    return out


async def run_fleet_page(root: Path, plan: PagePlan) -> list[dict[str, Any]]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return _unavailable(plan, "unavailable: playwright is not installed "
                                  "(pip install -e '.[test]')")
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - one stat before anything runs
        return _unavailable(plan, f"unavailable: {CHROMIUM} is missing "
                                  "(apt-get install chromium)")
    async with ControllerProcess(root, "dashboard", "fsync") as ctl, \
            Fleet(ctl.url, ctl.token, prefix="p", seed=11, connect_timeout_s=60) as fleet:
        sims = await fleet.add(plan.nodes)
        await fleet.wait_online(sims, timeout_s=600)
        triggers = sorted(sims, key=lambda s: s.node_id)[:VISIBLE]
        seen: dict[tuple[str, str], list[float]] = {}
        async with async_playwright() as p, asyncio.TaskGroup() as tg:
            listener = tg.create_task(_events(ctl.url, ctl.token,
                                              {s.node_id for s in triggers}, seen))
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 860})
                await page.goto(ctl.url + "/")
                await page.fill("input[type=password]", ctl.token)
                t0 = time.monotonic()
                await page.click("button[type=submit]")
                await page.wait_for_function(
                    "(n) => document.querySelector('.vlist [data-node-id]') && "
                    "(document.querySelector('.counts') || {}).textContent"
                    "?.startsWith(n + ' nodes')", arg=plan.nodes, timeout=300_000)
                first_paint_ms = (time.monotonic() - t0) * 1000
                await page.evaluate(_OBSERVE)
                for n in range(plan.rounds):
                    sim = triggers[n % len(triggers)]
                    assert sim.link is not None
                    sim.link.drop_now()
                    await fleet.wait_online([sim], min_welcomes=n // len(triggers) + 2,
                                            timeout_s=60)
                    await page.wait_for_selector(
                        f'[data-node-id="{sim.node_id}"][data-liveness="online"]',
                        timeout=60_000)
                    await asyncio.sleep(0.05)  # one change at a time: latency, not throughput
                changes = await page.evaluate("window.__changes")
            finally:
                await browser.close()
                listener.cancel()
    samples = _latencies(changes, seen)
    common = {"nodes": plan.nodes, "rounds": plan.rounds, "samples": len(samples),
              **({} if samples else {"note": "unavailable: no change reached the DOM"})}
    return [row("fleet_page", "tether", "first_paint_ms", round(first_paint_ms, 1), "ms",
                nodes=plan.nodes, note="sign-in click to every node counted and the first "
                "rows painted"),
            row("fleet_page", "tether", "liveness_to_dom_p50_ms", percentile(samples, 50), "ms",
                **common),
            row("fleet_page", "tether", "liveness_to_dom_p99_ms", percentile(samples, 99), "ms",
                **common)]
