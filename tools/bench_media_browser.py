"""The ``media`` / ``tether`` / ``first_frame_ms`` row: in real Chromium, from the media
page's offer until the browser has the first frame of the node's test pattern.

One controller process, one real node process (``tether node run --rtc-host-address
127.0.0.1``: media on loopback), headless Chromium (Debian's ``/usr/bin/chromium`` through
Playwright, with fake media and loopback candidates, as tests/e2e/test_dashboard_media.py
runs it) signed in on the node's media page. Each round opens a new peer (**Open peer**)
and reads the page's own measure (js/media.js): ``performance.now()`` when the offer goes
out on ``/ws`` to the first frame the ``<video>`` presents (``requestVideoFrameCallback``),
or the first ``getStats()`` poll (every 50 ms) that counts a decoded frame, whichever comes
first; then closes the peer. The row is the median of the rounds (``runs`` lists them);
the first round includes the node loading aiortc, so it is reported apart
(``first_round_ms``) and left out of the median when there are more.

When Playwright or Chromium is missing, the row carries no value and a note saying why.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .bench_util import ControllerProcess, row

CHROMIUM = "/usr/bin/chromium"
NODE_ID = "bench-media"
ROUND_TIMEOUT_MS = 60_000
CHROMIUM_ARGS = ["--no-sandbox", "--allow-loopback-in-peer-connection",
                 "--disable-features=WebRtcHideLocalIpsWithMdns",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required"]
FIRST_FRAME_ROW = ("media", "tether", "first_frame_ms")


@dataclass(frozen=True)
class FirstFramePlan:
    rounds: int


FIRST_FRAME_PLANS = {"tiny": FirstFramePlan(rounds=1), "quick": FirstFramePlan(rounds=4),
                     "full": FirstFramePlan(rounds=8)}


def _unavailable(why: str) -> list[dict[str, Any]]:
    return [row(*FIRST_FRAME_ROW, None, "ms", note=why)]


def _tether(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether.cli.main", "--log-level", "warning", *args]


async def _node(ctl: ControllerProcess, root: Path) -> subprocess.Popen[bytes]:
    """An enrolled ``tether node run`` on loopback media, online when returned."""
    state = root / "node-media"
    async with httpx.AsyncClient(base_url=ctl.url, timeout=15,
                                 headers={"Authorization": f"Bearer {ctl.token}"}) as http:
        resp = await http.post("/api/v1/join-tokens", json={"uses": 1})
        resp.raise_for_status()
        enroll = await asyncio.create_subprocess_exec(
            *_tether("node", "enroll", "--controller", ctl.url, "--token",
                     resp.json()["token"], "--node-id", NODE_ID, "--state-dir", str(state)),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            _, err = await enroll.communicate()
        if enroll.returncode != 0:
            raise RuntimeError(f"node enroll failed: {err.decode()[-500:]}")
        node = _spawn_node(state)
        try:
            async with asyncio.timeout(60):
                while (await http.get(f"/api/v1/nodes/{NODE_ID}")).json().get(
                        "liveness") != "online":
                    if node.poll() is not None:
                        raise RuntimeError("the node exited: "
                                           + (state / "node.log").read_text()[-500:])
                    await asyncio.sleep(0.1)
        except BaseException:
            _stop(node)
            raise
    return node


def _spawn_node(state: Path) -> subprocess.Popen[bytes]:
    with open(state / "node.log", "wb") as log:
        return subprocess.Popen(_tether("node", "run", "--state-dir", str(state),
                                        "--rtc-host-address", "127.0.0.1"),
                                stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_first_frame(root: Path, plan: FirstFramePlan) -> list[dict[str, Any]]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return _unavailable("unavailable: playwright is not installed (pip install -e '.[test]')")
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - one stat before anything runs
        return _unavailable(f"unavailable: {CHROMIUM} is missing (apt-get install chromium)")
    async with ControllerProcess(root, "media-browser", "fsync",
                                 extra=["--rtc-host-address", "127.0.0.1"]) as ctl:
        node = await _node(ctl, root)
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                  args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 900})
                    await page.goto(ctl.url + "/")
                    await page.fill("input[type=password]", ctl.token)
                    await page.click("button[type=submit]")
                    await page.wait_for_selector('#conn[data-state="live"]')
                    await page.goto(f"{ctl.url}/#/node/{NODE_ID}/media")
                    runs = []
                    for _ in range(plan.rounds):
                        await page.click('[data-media="open"]')
                        handle = await page.wait_for_function(
                            "() => document.querySelector('[data-first-frame-ms]')"
                            "?.dataset.firstFrameMs", timeout=ROUND_TIMEOUT_MS)
                        runs.append(float(await handle.json_value()))
                        await page.click('[data-media="close"]')
                        await page.wait_for_selector('[data-media-state="closed"]')
                        # the node drops the closed peer before the next (bounded wait)
                        t0 = time.monotonic()
                        while time.monotonic() - t0 < 10 and (
                                await page.locator("[data-rtc-panel] .rtc-peer").count()):
                            await asyncio.sleep(0.1)
                finally:
                    await browser.close()
        finally:
            _stop(node)
    steady = runs[1:] or runs
    return [row(*FIRST_FRAME_ROW, round(statistics.median(steady), 1), "ms", runs=runs,
                first_round_ms=runs[0], rounds=plan.rounds,
                note="offer sent to the first test-pattern frame in Chromium, loopback")]
