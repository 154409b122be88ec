"""The browser dashboard in a real browser (issue 13, "Done when"): headless Chromium from
Debian's ``chromium`` package, driven by Playwright, against a real controller and real
node processes.

One walk through what an operator does: sign in; see a node come online; run ``echo hello``
from a node's console and see it stream in; ping two nodes at once and see each result;
stop a node and see its badge change with no reload; and, from a page on another origin,
be refused on ``/ws`` with no welcome. Everything waits on conditions (Playwright's
``expect``), never on sleeps. Screenshots go to the test's tmp dir, and to ``docs/img/``
when ``TETHER_DOCS_SCREENSHOTS=1`` (a test run never rewrites tracked files otherwise).

When Chromium or Playwright is missing, the test is skipped with the reason (failed under
CI: ``server_unavailable``); ``make test`` installs both (SYSDEPS, the test extras).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.tools.servers import ServerUnavailable

from ..conftest import server_unavailable
from ..helpers import ControllerProc, NodeProc

CHROMIUM = "/usr/bin/chromium"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT_MS = 20_000


@pytest.fixture
def browser(controller: ControllerProc) -> Iterator[Any]:
    """A headless Chromium (Debian's), or the skip-with-reason path when there is none.
    It takes ``controller`` so that the controller (and PostgreSQL's async fixtures) is set
    up first: sync Playwright runs an event loop of its own in this thread while open."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        server_unavailable(ServerUnavailable(
            "playwright is not installed: pip install -e '.[test]'"))
    if not Path(CHROMIUM).exists():
        server_unavailable(ServerUnavailable(
            f"{CHROMIUM} is missing: apt-get install chromium (make sysdeps)"))
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox"])  # root in CI containers
        except PlaywrightError as exc:
            server_unavailable(ServerUnavailable(f"chromium cannot start: {exc.message}"))
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def other_origin() -> Iterator[str]:
    """A second tiny HTTP server on another port (another origin): its one page is what a
    hostile site would serve. Owned here, shut down on exit."""
    page = b"<!doctype html><title>elsewhere</title><p>another site</p>"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="other-origin", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def shoot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"))
    if os.environ.get("TETHER_DOCS_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / f"dashboard-{name}.png"))


def sign_in(page: Any, controller: ControllerProc) -> None:
    from playwright.sync_api import expect

    page.goto(controller.url + "/")
    token = page.locator("input[type=password]")
    expect(token).to_be_visible(timeout=WAIT_MS)
    token.fill(controller.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)


@pytest.mark.both_backends
def test_an_operator_drives_the_fleet_from_a_real_browser(
        browser: Any, controller: ControllerProc, make_node: Callable[..., NodeProc],
        tmp_path: Path) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if (
        msg.type == "error" and "Content Security Policy" in msg.text) else None)
    sign_in(page, controller)
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page

    # A node comes online while the operator watches.
    node_a = make_node("web-a")
    row_a = page.locator('[data-node-id="web-a"]')
    expect(row_a).to_have_attribute("data-liveness", "online", timeout=WAIT_MS)
    node_b = make_node("web-b")
    row_b = page.locator('[data-node-id="web-b"]')
    expect(row_b).to_have_attribute("data-liveness", "online", timeout=WAIT_MS)
    shoot(page, tmp_path, "fleet")

    # The console: `echo hello` streams in.
    row_a.locator("a[href]").click()
    argv = page.locator("input[name=argv]")
    expect(argv).to_be_visible(timeout=WAIT_MS)
    argv.fill("echo hello")
    argv.press("Enter")
    output = page.locator("[data-command-output]")
    expect(output).to_contain_text("hello", timeout=WAIT_MS)
    expect(page.locator(".console [data-state]")).to_have_attribute("data-state", "succeeded",
                                                                    timeout=WAIT_MS)
    # The readiness tree, then an incident, live: its sidecar dies and the runtime starts
    # another (the page stays; the report comes over node:<id>).
    tree = page.locator("[data-readiness-tree]")
    expect(tree.locator('[data-check="transport"]')).to_have_attribute("data-ok", "true",
                                                                       timeout=WAIT_MS)
    node_a.kill_sidecar9()
    expect(page.locator('[data-incidents] [data-incident-class="transport"]').first
           ).to_contain_text("sidecar went away", timeout=WAIT_MS)
    expect(tree.locator('[data-check="transport"]')).to_have_attribute("data-ok", "true",
                                                                       timeout=WAIT_MS)
    shoot(page, tmp_path, "node")
    # Output is text, never markup: a node's bytes cannot run script here.
    argv.fill("""echo '<img src=x onerror="window.__pwned=1">'""")
    argv.press("Enter")
    expect(output).to_contain_text('<img src=x onerror="window.__pwned=1">', timeout=WAIT_MS)
    assert output.locator("img").count() == 0
    assert page.evaluate("window.__pwned") is None
    # Pause, resume and cancel a running command from the console.
    state = page.locator(".console [data-state]")
    argv.fill("sleep 60")
    argv.press("Enter")
    expect(state).to_have_attribute("data-state", "running", timeout=WAIT_MS)
    for button, after in (("Pause", "paused"), ("Resume", "running"), ("Cancel", "cancelled")):
        page.get_by_role("button", name=button).click()
        expect(state).to_have_attribute("data-state", after, timeout=WAIT_MS)

    # The commands page: recent commands; a click shows one's output.
    page.locator('a[data-nav="commands"]').click()
    echo_row = page.locator("tr[data-command-id]", has_text="exec echo hello")
    expect(echo_row).to_have_attribute("data-state", "succeeded", timeout=WAIT_MS)
    expect(page.locator("tr[data-command-id]", has_text="exec sleep 60")).to_have_attribute(
        "data-state", "cancelled")
    echo_row.click()
    expect(page.locator(".detail [data-command-output]")).to_have_text("hello\n",
                                                                       timeout=WAIT_MS)
    shoot(page, tmp_path, "commands")
    page.locator('a[data-nav="fleet"]').click()

    # Bulk: diag.ping over both nodes, a result for each.
    for row in (row_a, row_b):
        row.locator("input[type=checkbox]").check()
    page.locator('[data-bulk="diag.ping"]').click()
    for node_id in ("web-a", "web-b"):
        expect(page.locator(f'[data-bulk-node="{node_id}"]')).to_have_attribute(
            "data-state", "succeeded", timeout=WAIT_MS)
    shoot(page, tmp_path, "bulk")

    # A node stops: its badge changes live, with no reload.
    node_b.cleanup()  # the runtime says goodbye, then its sidecar stops
    expect(row_b).to_have_attribute("data-liveness", re.compile("^(stale|offline)$"),
                                    timeout=WAIT_MS)
    expect(row_a).to_have_attribute("data-liveness", "online")
    assert page.evaluate("window.__sameDocument") is True

    # Disable and enable from its page; delete where the controller has the route (the
    # page says so where it does not).
    row_b.locator("a[href]").click()
    page.get_by_role("button", name="Disable").click()
    expect(page.locator(".tag")).to_have_text("disabled", timeout=WAIT_MS)
    page.get_by_role("button", name="Enable").click()
    expect(page.locator(".tag")).to_have_text("enabled", timeout=WAIT_MS)
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("body")).to_contain_text(
        re.compile("cannot delete nodes yet|web-a"), timeout=WAIT_MS)
    page.goto(controller.url + "/#/")
    expect(row_a).to_have_attribute("data-liveness", "online", timeout=WAIT_MS)

    # Dark mode by the toggle (the headless default is light), and a phone's width.
    page.locator("#theme").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    shoot(page, tmp_path, "fleet-dark")
    page.set_viewport_size({"width": 390, "height": 844})
    expect(row_a.locator("a[href]")).to_be_visible()
    shoot(page, tmp_path, "phone")
    assert not errors, errors
    context.close()


def test_a_page_on_another_origin_is_refused_on_ws(browser: Any,
                                                   controller: ControllerProc) -> None:
    """Cross-site WebSocket hijacking: a page elsewhere opens /ws with the operator's token
    (the worst case: it has it) and is closed with 4403 (or never connected) before any
    welcome."""
    context = browser.new_context()
    page = context.new_page()
    with other_origin() as elsewhere:
        page.goto(elsewhere + "/")
        outcome = page.evaluate("""([url, token]) => new Promise((resolve) => {
            const frames = [];
            const ws = new WebSocket(url, "tether.v1.json");
            ws.onopen = () => ws.send(JSON.stringify({t: "hello", b: {token}}));
            ws.onmessage = (m) => frames.push(JSON.parse(m.data).t);
            ws.onclose = (e) => resolve({code: e.code, frames});
            ws.onerror = () => {};
        })""", [f"ws://127.0.0.1:{controller.port}/ws", controller.token])
    context.close()
    assert outcome["code"] in (4403, 1006), outcome  # 1006: refused before the handshake
    assert "welcome" not in outcome["frames"], outcome


def test_the_console_splits_a_command_line_as_a_shell_would(
        browser: Any, controller: ControllerProc) -> None:
    """js/shlex.js, run in the browser, against what Python's shlex.split answers."""
    import shlex

    cases = ["echo hello", "  a\tb  ", "echo 'a b' \"c d\" e\\ f", "printf '%s\\n' \"x\\\"y\"",
             "a''b", 'a""', "x 'it''s'", "tab\there", "é ü 'ñ'", ""]
    page = browser.new_page()
    page.goto(controller.url + "/")
    got = page.evaluate("""async (cases) => {
        const { split } = await import("/static/js/shlex.js");
        return cases.map((c) => split(c));
    }""", cases)
    assert got == [shlex.split(c) for c in cases]
    refused = page.evaluate(r"""async () => {
        const { split, SplitError } = await import("/static/js/shlex.js");
        return ["echo 'open", 'echo "open', "trailing\\"].map((c) => {
            try { return split(c); } catch (e) { return e instanceof SplitError; }
        });
    }""")
    assert refused == [True, True, True]  # unterminated quotes, a trailing backslash
    page.close()


def enroll_many(controller: ControllerProc, count: int,
                labels: Callable[[int], dict[str, str]]) -> list[str]:
    """``count`` nodes enrolled over REST (keys only, no process): offline rows."""
    import base64

    from tether.protocol.signing import generate_private_key, public_key_raw

    api = controller.api()
    join = api.post("/api/v1/join-tokens", json={"uses": count}).json()["token"]
    ids = []
    for i in range(count):
        node_id = f"sim-{i:04d}"
        key = base64.urlsafe_b64encode(public_key_raw(generate_private_key())).rstrip(b"=")
        resp = api.client.post("/v1/edge/enroll", json={
            "join_token": join, "node_id": node_id, "public_key": key.decode(),
            "labels": labels(i)})
        assert resp.status_code == 201, resp.text
        ids.append(node_id)
    return ids


def test_the_fleet_list_is_virtualised_filtered_and_shows_labels_as_text(
        browser: Any, controller: ControllerProc, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    hostile = '<img src=x onerror="window.__pwned=1">'
    ids = enroll_many(controller, 400, lambda i: {
        "env": "lab" if i % 2 else "prod", **({"note": hostile} if i == 7 else {})})
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    sign_in(page, controller)
    expect(page.locator(".counts")).to_contain_text("400 nodes", timeout=WAIT_MS)
    rows = page.locator(".vlist [data-node-id]")
    assert 5 < rows.count() < 60  # only the rows in view (and a few around) are in the DOM
    assert page.locator('[data-node-id="sim-0399"]').count() == 0
    # Scrolling brings the last rows in; each carries its state and a link to its page.
    page.locator(".vlist").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    last = page.locator('[data-node-id="sim-0399"]')
    expect(last).to_have_attribute("data-liveness", "offline", timeout=WAIT_MS)
    assert last.locator("a[href]").get_attribute("href") == "#/node/sim-0399"
    assert 5 < rows.count() < 60
    # A label filter, saved as a view, survives a reload (localStorage).
    page.locator("input[name=label-filter]").fill("env=lab, note")
    expect(page.locator(".counts")).to_contain_text("1 shown", timeout=WAIT_MS)
    row = page.locator('[data-node-id="sim-0007"]')
    expect(row).to_contain_text(f"note={hostile}")
    assert row.locator("img").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.once("dialog", lambda d: d.accept("lab notes"))
    page.get_by_role("button", name="Save view").click()
    page.reload()
    page.locator("select[name=view]").select_option(label="lab notes")
    expect(page.locator(".counts")).to_contain_text("1 shown", timeout=WAIT_MS)
    assert len(ids) == 400
    page.close()


def test_the_dashboard_resyncs_after_the_controller_restarts(
        browser: Any, controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    """/ws drops when the controller restarts: the page reconnects by itself, subscribes
    again and shows the fleet as it is now (the snapshot), then follows its events."""
    from playwright.sync_api import expect

    node = make_node("web-c")
    page = browser.new_page()
    sign_in(page, controller)
    row = page.locator('[data-node-id="web-c"]')
    expect(row).to_have_attribute("data-liveness", "online", timeout=WAIT_MS)
    page.evaluate("window.__sameDocument = true")
    controller.terminate()
    expect(page.locator("#conn")).not_to_have_attribute("data-state", "live", timeout=WAIT_MS)
    controller.start()  # the same port and data dir
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    expect(row).to_have_attribute("data-liveness", "online", timeout=WAIT_MS)
    node.cleanup()
    expect(row).to_have_attribute("data-liveness", re.compile("^(stale|offline)$"),
                                  timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument") is True
    page.close()


def test_bulk_actions_follow_a_job_by_the_pinned_contract(
        browser: Any, controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    """Bulk actions go through POST /api/v1/jobs when it exists. Here the jobs API answers
    by its pinned shapes (202 {job_id}; GET -> {job_id, state, nodes: {id: {command_id,
    state}}, summary}) from a stand-in in the browser, naming real commands, so the page's
    job path is proven whether or not this controller has jobs yet; each node's result
    comes from its real command over /ws."""
    from playwright.sync_api import expect

    for node_id in ("job-a", "job-b"):
        make_node(node_id)
    api = controller.api()
    page = browser.new_page()
    posted: list[dict[str, Any]] = []
    job: dict[str, Any] = {}

    def jobs_api(route: Any) -> None:
        request = route.request
        if request.method == "POST":
            body = request.post_data_json
            posted.append(body)
            nodes = {n: {"command_id": api.submit(n, body["kind"], body["args"])["command_id"],
                         "state": "queued"} for n in body["nodes"]}
            job.update(job_id="job_1", state="running", nodes=nodes,
                       summary={"queued": len(nodes)})
            route.fulfill(status=202, json={"job_id": "job_1"})
        else:
            route.fulfill(status=200, json=job)

    page.route(re.compile(r".*/api/v1/jobs(/job_1)?$"), jobs_api)
    sign_in(page, controller)
    for node_id in ("job-a", "job-b"):
        row = page.locator(f'[data-node-id="{node_id}"]')
        expect(row).to_have_attribute("data-liveness", "online", timeout=WAIT_MS)
        row.locator("input[type=checkbox]").check()
    page.locator('[data-bulk="diag.ping"]').click()
    expect(page.locator("[data-job-id]")).to_have_attribute("data-job-id", "job_1",
                                                             timeout=WAIT_MS)
    for node_id in ("job-a", "job-b"):
        expect(page.locator(f'[data-bulk-node="{node_id}"]')).to_have_attribute(
            "data-state", "succeeded", timeout=WAIT_MS)
    assert posted == [{"nodes": ["job-a", "job-b"], "kind": "diag.ping", "args": {},
                       "offline": "skip"}]
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    page.close()


def test_the_node_page_web_terminal_runs_a_shell_resizes_and_returns_the_exit_code(
        browser: Any, controller: ControllerProc, make_node: Callable[..., NodeProc],
        tmp_path: Path) -> None:
    """The node page's terminal (xterm.js, vendored) over /api/v1/nodes/{id}/shell: typed
    input reaches the remote shell and its output comes back; a smaller window reaches the
    remote pty (``stty size``); the idle terminal keeps its socket alive with pings; ``exit
    3`` shows exit code 3; a viewer is shown the refusal. No CSP violation on the way
    (xterm's <style> rules go to constructable stylesheets, js/terminal.js)."""
    from playwright.sync_api import expect

    make_node("term-a")
    viewer = controller.api().post("/api/v1/tokens", json={
        "role": "viewer", "name": "watcher", "ttl_s": 600}).json()["token"]
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if (
        msg.type == "error" and "Content Security Policy" in msg.text) else None)
    sign_in(page, controller)
    row = page.locator('[data-node-id="term-a"]')
    expect(row).to_have_attribute("data-liveness", "online", timeout=WAIT_MS)
    row.locator("a[href]").click()

    state = page.locator("[data-terminal-state]")
    host = page.locator(".terminal-host")
    screen = host.locator(".xterm-rows")
    with page.expect_websocket(lambda ws: ws.url.endswith("/term-a/shell")) as opened:
        page.locator('[data-terminal="open"]').click()
    shell_ws = opened.value
    expect(state).to_have_attribute("data-terminal-state", "open", timeout=WAIT_MS)

    def run(line: str) -> None:
        host.click()  # focus xterm's input
        page.keyboard.type(line)
        page.keyboard.press("Enter")

    run("echo web-$((40+2))")
    expect(screen).to_contain_text("web-42", timeout=WAIT_MS)

    # 24-bit colour under the strict CSP (js/terminal.js styleCellsThroughCssom): the cell
    # has its exact colour, and no CSP violation is reported (checked at the end).
    expect(host).to_have_attribute("data-truecolor", "cssom")
    run(r"printf '\033[38;2;255;0;128mTRUE\033[48;2;0;128;255mCOLOR\033[0m\n'")
    true_cell = screen.locator("span", has_text=re.compile("^TRUE$")).last
    expect(true_cell).to_have_css("color", "rgb(255, 0, 128)", timeout=WAIT_MS)
    expect(screen.locator("span", has_text=re.compile("^COLOR$")).last).to_have_css(
        "background-color", "rgb(0, 128, 255)")

    # The remote pty has the browser's size, and follows the window when it shrinks.
    size = host.get_attribute("data-size")
    assert size and re.fullmatch(r"\d+x\d+", size), size
    run("stty size | tr ' ' x")
    expect(screen).to_contain_text(size, timeout=WAIT_MS)
    page.set_viewport_size({"width": 900, "height": 640})
    expect(host).not_to_have_attribute("data-size", size, timeout=WAIT_MS)
    smaller = host.get_attribute("data-size")
    assert smaller and re.fullmatch(r"\d+x\d+", smaller), smaller
    run("stty size | tr ' ' x")
    expect(screen).to_contain_text(smaller, timeout=WAIT_MS)
    shoot(page, tmp_path, "terminal")

    # Idle, the page pings on its own (the keepalive), and the shell still answers after.
    with shell_ws.expect_event("framesent", predicate=lambda p: '"t":"ping"' in str(p),
                               timeout=15_000):
        pass
    run("echo still-$((6*7))")
    expect(screen).to_contain_text("still-42", timeout=WAIT_MS)

    run("exit 3")
    expect(state).to_have_attribute("data-terminal-state", "exited", timeout=WAIT_MS)
    expect(state).to_have_attribute("data-exit-code", "3")
    expect(page.locator(".webterm")).to_contain_text("exit code 3")

    # A viewer may look but not open a shell: the refusal is shown, nothing breaks.
    watcher = context.new_page()
    watcher.on("pageerror", lambda exc: errors.append(str(exc)))
    watcher.goto(controller.url + "/#/node/term-a")
    watcher.locator("input[type=password]").fill(viewer)
    watcher.get_by_role("button", name="Sign in").click()
    watcher.locator('[data-terminal="open"]').click()
    refused = watcher.locator("[data-terminal-state]")
    expect(refused).to_have_attribute("data-terminal-state", "refused", timeout=WAIT_MS)
    expect(watcher.locator(".webterm")).to_contain_text(re.compile("4403|forbidden"))
    assert not errors, errors
    context.close()


HOSTILE_HEALTH = {
    "at_ms": 1_700_000_000_000, "ready": False,
    "reasons": ['<img src=x onerror="window.__pwned=1">'],
    "checks": {"store": {"ok": False, "state": "<b>error</b>",
                         "detail": '<img src=x onerror="window.__pwned=2">'}},
    "incidents": [{"at_ms": 1_700_000_000_000, "class": "<i>transport</i>",
                   "message": '<script>window.__pwned=3</script>', "close_code": 1006}],
    "incidents_total": 1}


def send_health(controller: ControllerProc, node_id: str, report: dict[str, Any]) -> None:
    """Enroll ``node_id`` and send ``report`` as a raw node would (node.event kind health),
    on a loop of its own in a thread of its own (sync Playwright owns this one)."""
    import asyncio

    from tether.protocol.frames import Frame

    from ..controller.conftest import Edge, Identity, enroll_identity

    async def run() -> None:
        ident: Identity = await enroll_identity(controller, node_id)
        edge = Edge(controller.url)
        try:
            client = await edge.session(ident)
            await client.send(Frame(t="node.event", s="evt", q=1, id="h1",
                                    b={"kind": "health", "data": report}))
            assert (await client.recv_type("edge.ack")).b["acks"]["evt"] == 1
        finally:
            await edge.aclose()

    failed: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(failed, lambda: asyncio.run(run())))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and not failed, failed


def _capture(failed: list[BaseException], fn: Callable[[], object]) -> None:
    try:
        fn()
    except BaseException as exc:  # handed to the test's thread, which raises it
        failed.append(exc)


def test_a_nodes_readiness_and_incidents_show_as_text_whatever_they_hold(
        browser: Any, controller: ControllerProc, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    send_health(controller, "web-x", HOSTILE_HEALTH)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    sign_in(page, controller)
    page.goto(controller.url + "/#/node/web-x")
    store = page.locator('[data-readiness-tree] [data-check="store"]')
    expect(store).to_have_attribute("data-ok", "false", timeout=WAIT_MS)
    expect(store).to_contain_text('<b>error</b>')
    expect(store).to_contain_text('<img src=x onerror="window.__pwned=2">')
    incident = page.locator("[data-incidents] tbody tr")
    expect(incident).to_contain_text("<script>window.__pwned=3</script>")
    expect(incident).to_have_attribute("data-incident-class", "<i>transport</i>")
    expect(page.locator("[data-ready]")).to_have_attribute("data-ready", "false")
    main = page.locator("main")
    assert main.locator("img").count() == 0 and main.locator("script").count() == 0
    assert main.locator("b").count() == 0 and main.locator("i").count() == 0
    assert page.evaluate("window.__pwned") is None
    context.close()
