"""The dashboard's media page in a real browser (issue 14, "Done when"): headless Chromium
(Debian's, through Playwright) opens a WebRTC peer to a real node process through a real
controller's /ws relay, receives the node's test pattern (decoded frames > 0 in
``getStats()``), sends its fake camera and sees it looped back, toggles it on the same
peer, and uploads a file over the ``file`` channel meanwhile.

Tests stay on this machine: the node offers only 127.0.0.1 (``--rtc-host-address``), and
no STUN or TURN server is configured on either end. The page trickles only Chromium's
127.0.0.1 host candidate (the controller's ``--rtc-host-address``), which Chromium gathers
with ``--allow-loopback-in-peer-connection`` and shows as an address (not an mDNS name)
with ``WebRtcHideLocalIpsWithMdns`` disabled. Chromium has no setting that keeps its own
end of the checks on loopback (its IP handling policies only narrow to the default route's
interface): with other interfaces up it may pair its interface address with the node's
127.0.0.1, which the kernel delivers over ``lo`` (a local address) and never puts on a
wire; the test asserts both ends are this machine's addresses, the node's 127.0.0.1. In a
network namespace holding only ``lo`` (``make test-media-netns``, root) it asserts
127.0.0.1 on both ends.

The upload needs the node's file subflow (``node/rtc/filexfer.py``); on a tree without it
that part is skipped, saying so, after everything else was checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.node.rtc.ice import machine_addresses
from tether.tools.servers import ServerUnavailable

from ..conftest import server_unavailable
from ..helpers import FAST, ControllerProc, NodeProc
from .test_dashboard import CHROMIUM, DOCS_IMG, sign_in

NODE = "media-a"
WAIT_MS = 30_000
UPLOAD_BYTES = 24 << 20  # long enough to outlast two camera toggles on this machine
CAMERA_SIZE = "640x480"  # Chromium's fake capture device
PATTERN_SIZE = "320x240"  # node/rtc/media.py's test pattern

# What keeps Chromium's WebRTC on this machine's loopback, and able to run headless.
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in CI containers
    "--allow-loopback-in-peer-connection",  # gather a 127.0.0.1 host candidate
    "--disable-features=WebRtcHideLocalIpsWithMdns",  # addresses, not .local names
    "--use-fake-device-for-media-stream",  # a synthetic camera
    "--use-fake-ui-for-media-stream",  # no permission prompt
    "--autoplay-policy=no-user-gesture-required",
]


def media_browser(playwright: Any) -> Any:
    """Chromium with :data:`CHROMIUM_ARGS`, or the skip-with-reason path."""
    from playwright.sync_api import Error as PlaywrightError

    if not Path(CHROMIUM).exists():
        server_unavailable(ServerUnavailable(
            f"{CHROMIUM} is missing: apt-get install chromium (make sysdeps)"))
    try:
        return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=CHROMIUM_ARGS)
    except PlaywrightError as exc:
        server_unavailable(ServerUnavailable(f"chromium cannot start: {exc.message}"))


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProc]:
    """The controller, telling the media page to trickle 127.0.0.1 host candidates only."""
    ctl = ControllerProc(tmp_path / "controller",
                         extra=[*FAST, "--rtc-host-address", "127.0.0.1"])
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.terminate()


@pytest.fixture
def browser(controller: ControllerProc) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        server_unavailable(ServerUnavailable(
            "playwright is not installed: pip install -e '.[test]'"))
    with sync_playwright() as p:
        chromium = media_browser(p)
        try:
            yield chromium
        finally:
            chromium.close()


def attr(page: Any, selector: str, name: str) -> str:
    return str(page.locator(selector).first.get_attribute(name) or "")


def log_text(page: Any) -> list[str]:
    """The page's log, oldest first."""
    return list(reversed(page.locator(".media-log li").all_inner_texts()))


def test_an_operator_sees_the_node_sends_the_camera_and_uploads_while_toggling_it(
        browser: Any, controller: ControllerProc, make_node: Callable[..., NodeProc],
        tmp_path: Path) -> None:
    from playwright.sync_api import expect

    node = make_node(NODE, extra=["--rtc-host-address", "127.0.0.1",
                                  "--rtc-video", "loopback"])
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if (
        msg.type == "error" and "Content Security Policy" in msg.text) else None)
    sign_in(page, controller)

    # From the node's page to its media page; open a peer.
    page.goto(f"{controller.url}/#/node/{NODE}")
    page.locator('a[data-nav="media"]').click()
    page.locator('[data-media="open"]').click()
    state = page.locator("[data-media-state]")
    expect(state).to_have_attribute("data-media-state", "connected", timeout=WAIT_MS)

    # The node's test pattern is decoded (getStats inbound-rtp framesDecoded).
    page.wait_for_function(
        "() => Number(document.querySelector('[data-frames-decoded]').dataset.framesDecoded) > 0",
        timeout=WAIT_MS)
    frame_size = page.locator("[data-frame-size]")
    expect(frame_size).to_have_attribute("data-frame-size", PATTERN_SIZE, timeout=WAIT_MS)
    expect(page.locator("[data-first-frame-ms]")).to_have_attribute(
        "data-first-frame-ms", re.compile(r"^\d+$"), timeout=WAIT_MS)
    pair = page.locator("[data-candidate-pair]")
    expect(pair).to_have_text(re.compile(r"^host \S+ ↔ host 127\.0\.0\.1$"), timeout=WAIT_MS)
    chromium_end = pair.inner_text().split()[1]
    assert chromium_end in machine_addresses()  # this machine: routed over lo by the kernel
    if machine_addresses() <= {"127.0.0.1", "::1"}:  # `make test-media-netns`: lo only
        assert chromium_end == "127.0.0.1"
    psid = attr(page, "[data-peer-session-id]", "data-peer-session-id")
    assert psid.startswith("web-")

    # An upload starts; the camera goes on and off twice meanwhile, on the same peer.
    payload = os.urandom(UPLOAD_BYTES)
    source = tmp_path / "upload.bin"  # a path: Playwright hands it to Chromium as it is
    source.write_bytes(payload)
    page.locator('[data-media="file"]').set_input_files(str(source))
    upload_state = page.locator("[data-upload-state]")
    page.locator('[data-media="upload"]').click()
    expect(upload_state).to_have_attribute("data-upload-state", "sending", timeout=WAIT_MS)
    for _ in range(2):
        page.locator('[data-media="camera-on"]').click()
        try:
            expect(frame_size).to_have_attribute("data-frame-size", CAMERA_SIZE,
                                                 timeout=WAIT_MS)
        except AssertionError as exc:  # which end kept the old size: say it in the failure
            view = controller.api().get(f"/api/v1/nodes/{NODE}").json()
            local = json.loads((node.state_dir / "status.json").read_text()).get("rtc")
            raise AssertionError(f"{exc}\npage log: {log_text(page)}\nnode rtc: "
                                 f"{view.get('rtc')}\nthe node's own: {local}\nnode log: "
                                 f"{node.log()[-3000:]}") from None
        if _ == 0:
            page.screenshot(path=str(tmp_path / "media.png"))
            if os.environ.get("TETHER_DOCS_SCREENSHOTS") == "1":
                DOCS_IMG.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(DOCS_IMG / "dashboard-media.png"))
        page.locator('[data-media="camera-off"]').click()
        expect(frame_size).to_have_attribute("data-frame-size", PATTERN_SIZE, timeout=WAIT_MS)
    expect(page.locator("[data-negotiations]")).to_have_attribute("data-negotiations", "5",
                                                                  timeout=WAIT_MS)
    assert attr(page, "[data-peer-session-id]", "data-peer-session-id") == psid
    expect(state).to_have_attribute("data-media-state", "connected")

    # The node's own report: the one peer, connected, never rebuilt.
    panel_peer = page.locator(f'[data-rtc-panel] [data-peer-session-id="{psid}"]')
    expect(panel_peer).to_have_attribute("data-peer-state", "connected", timeout=WAIT_MS)
    view = controller.api().get(f"/api/v1/nodes/{NODE}").json()
    peers = [p for p in view["rtc"]["peers"] if p["peer_session_id"] == psid]
    assert len(peers) == 1 and peers[0]["connections_total"] == 1
    # direct, no server: prflx when Chromium's check came before its trickled candidate,
    # or from an address the page did not trickle (docstring)
    assert peers[0]["candidate_pair"] in ("host", "prflx")
    assert not errors, errors

    expect(upload_state).to_have_attribute("data-upload-state", "verified", timeout=120_000)
    lines = log_text(page)
    uploaded = next(i for i, line in enumerate(lines) if "uploaded upload.bin" in line)
    toggles = [i for i, line in enumerate(lines) if "camera o" in line]
    # the first renegotiation (camera on) completed while the upload ran, and it carried on
    assert len(toggles) == 4 and toggles[0] < uploaded, lines
    landed = node.state_dir / "workspace" / "upload.bin"
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == \
        hashlib.sha256(payload).hexdigest()
    assert attr(page, "[data-upload-state]", "data-sha256") == \
        hashlib.sha256(payload).hexdigest()
    assert attr(page, "[data-peer-session-id]", "data-peer-session-id") == psid
