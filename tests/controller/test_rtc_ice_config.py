"""The dashboard's ICE servers: ``--rtc-ice-server`` (cli/controller_rtc.py) into
ControllerConfig, served by ``GET /api/v1/rtc/config`` (controller/api/rtc.py)."""

from __future__ import annotations

import argparse

import httpx
import pytest

from tether.cli.controller_rtc import add_rtc_arguments, rtc_config
from tether.controller.api.rtc import ice_servers, page_config
from tether.controller.config import ControllerConfig


def parse(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_rtc_arguments(parser)
    return rtc_config(parser.parse_args(list(argv)))


def test_no_ice_server_is_the_default_so_the_browser_offers_host_candidates_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_RTC_ICE_SERVERS", raising=False)
    assert parse()["rtc_ice_servers"] == ()
    assert ice_servers(ControllerConfig()) == []


def test_turn_servers_carry_the_username_and_credential_and_stun_servers_do_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_RTC_ICE_CREDENTIAL", "s3cret")
    settings = parse("--rtc-ice-server", "stun:stun.example.net:3478",
                     "--rtc-ice-server", "turn:turn.example.net:3478?transport=tcp",
                     "--rtc-ice-username", "op")
    assert ice_servers(ControllerConfig(**settings)) == [  # type: ignore[arg-type]
        {"urls": ["stun:stun.example.net:3478"]},
        {"urls": ["turn:turn.example.net:3478?transport=tcp"], "username": "op",
         "credential": "s3cret"}]


def test_the_page_may_be_kept_to_host_candidates_from_listed_addresses(
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = parse("--rtc-host-address", "127.0.0.1", "--rtc-host-address", "::1")
    assert page_config(ControllerConfig(**settings))[  # type: ignore[arg-type]
        "host_addresses"] == ["127.0.0.1", "::1"]
    with pytest.raises(SystemExit) as exited:
        parse("--rtc-host-address", "localhost")
    assert exited.value.code == 2
    assert "must be an IP address" in capsys.readouterr().err


def test_the_environment_lists_ice_servers_when_no_flag_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_RTC_ICE_SERVERS", "stun:a.example:3478, stun:b.example")
    assert parse()["rtc_ice_servers"] == ("stun:a.example:3478", "stun:b.example")


@pytest.mark.parametrize("url", ["http://stun.example", "stun:", "stun:host name",
                                 "turn:h:1?transport=sctp", "stun:" + "a" * 400,
                                 'stun:x"><script>'])
def test_a_bad_ice_server_url_is_a_usage_error(url: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--rtc-ice-server", url)
    assert exited.value.code == 2
    assert "must be stun:host[:port]" in capsys.readouterr().err


async def test_the_rtc_config_is_served_to_operators_and_refused_to_viewers(
        api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/v1/rtc/config")
    assert (resp.status_code, resp.json()) == (200, {"ice_servers": [],
                                                     "host_addresses": []})
    token = (await api.post("/api/v1/tokens", json={"role": "viewer"})).json()["token"]
    viewer = await api.get("/api/v1/rtc/config",
                           headers={"Authorization": f"Bearer {token}"})
    assert viewer.status_code == 403
