"""The dashboard's rollout pages in a real browser (issue 15 "Visibility"): headless
Chromium (Debian's) driven by Playwright, against a real controller and two real nodes
(fixtures and sign-in as tests/e2e/test_dashboard.py). A rollout started through the API
appears on #/rollouts and is followed on #/rollout/<id> to ``completed`` with no reload;
a why and an actor holding markup are shown as text; a viewer gets no buttons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.cli.bundle import load_public_key, trust

from ..helpers import ControllerProc, NodeProc
from .test_bundle_updates import STEADY, bundle, make_key, publish
from .test_dashboard import WAIT_MS, browser, shoot  # noqa: F401 - browser is a fixture

HOSTILE = '<img src=x onerror="window.__pwned=1">'


def sign_in_with(page: Any, controller: ControllerProc, token: str) -> None:
    from playwright.sync_api import expect

    page.goto(controller.url + "/")
    field = page.locator("input[type=password]")
    expect(field).to_be_visible(timeout=WAIT_MS)
    field.fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)


def test_a_rollout_is_followed_live_to_completed_and_its_why_is_shown_as_text(
        browser: Any, controller: ControllerProc,  # noqa: F811 - the fixture
        make_node: Callable[..., NodeProc], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    api = controller.api()
    key, pub = make_key(tmp_path, "pub")
    for node_id in ("ro-a", "ro-b"):
        trust(make_node(node_id).state_dir, load_public_key(pub), None)
    publish(api, bundle(tmp_path, key, "web", 1, STEADY))
    hostile = api.post("/api/v1/tokens", json={"role": "operator", "name": HOSTILE}).json()
    viewer = api.post("/api/v1/tokens", json={"role": "viewer", "name": "look"}).json()

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if (
        msg.type == "error" and "Content Security Policy" in msg.text) else None)
    sign_in_with(page, controller, controller.token)
    page.goto(controller.url + "/#/rollouts")
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page

    # started (and paused at once) by an operator whose token name is markup
    as_hostile = {"Authorization": f"Bearer {hostile['token']}"}
    resp = api.client.post("/api/v1/rollouts", headers=as_hostile, json={
        "bundle": "web", "version": 1, "probation_s": 1,
        "rings": [{"name": "canary", "nodes": ["ro-a"]}, {"name": "rest", "nodes": ["ro-b"]}]})
    assert resp.status_code == 202, resp.text
    rid = resp.json()["rollout_id"]
    paused = api.client.post(f"/api/v1/rollouts/{rid}/pause", headers=as_hostile)
    assert paused.status_code == 202, paused.text

    row = page.locator(f'[data-rollout-id="{rid}"]')
    expect(row).to_have_attribute("data-state", "paused", timeout=WAIT_MS)  # live, no reload
    expect(row.locator("[data-progress]")).to_have_text("ring 1/2 canary")
    row.get_by_role("link", name=rid).click()

    expect(page.locator("[data-rollout-state]")).to_have_text("paused", timeout=WAIT_MS)
    why = page.locator("[data-rollout-why]")
    expect(why).to_contain_text("check: operator")
    expect(why).to_contain_text(HOSTILE)
    expect(page.locator("[data-rollout-actor]")).to_contain_text(HOSTILE)
    expect(page.locator('[data-rollout-node="ro-a"]')).to_have_attribute(
        "data-state", "healthy", timeout=WAIT_MS)  # its offer went on while paused
    expect(page.locator('[data-rollout-node="ro-b"]')).to_have_attribute("data-state",
                                                                       "pending")
    main = page.locator("main")
    assert main.locator("img").count() == 0 and main.locator("script").count() == 0
    shoot(page, tmp_path, "rollout-paused")

    # a viewer sees the same page without buttons
    look = context.new_page()
    sign_in_with(look, controller, viewer["token"])
    look.goto(controller.url + f"/#/rollout/{rid}")
    expect(look.locator("[data-rollout-state]")).to_have_text("paused", timeout=WAIT_MS)
    assert look.locator("[data-rollout-action]").count() == 0
    look.close()

    page.locator('[data-rollout-action="resume"]').click()
    expect(page.locator("[data-rollout-state]")).to_have_text("completed", timeout=WAIT_MS)
    for node_id in ("ro-a", "ro-b"):
        node_row = page.locator(f'[data-rollout-node="{node_id}"]')
        expect(node_row).to_have_attribute("data-state", "healthy", timeout=WAIT_MS)
        expect(node_row).to_contain_text("up for")
    expect(page.locator("[data-progress]")).to_have_text("all 2 rings done")
    assert page.locator("[data-rollout-action]").count() == 0  # nothing to do any more
    expect(page.locator('[data-ring="rest"]')).to_have_attribute("data-stage", "done")
    shoot(page, tmp_path, "rollout-completed")

    page.locator("a.back").click()
    expect(page.locator(f'[data-rollout-id="{rid}"]')).to_have_attribute(
        "data-state", "completed", timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument") is True
    assert page.evaluate("window.__pwned") is None
    assert errors == [], errors
    context.close()
