"""node/rtc/ice.py and `tether node run`'s ICE options: the host-address allowlist is
exactly what aioice offers (127.0.0.1 included, absent addresses left out), and bad
addresses or server URLs are refused with what to fix."""

from __future__ import annotations

import argparse

import aioice.ice
import pytest

from tether.cli.node_rtc import add_rtc_arguments, rtc_config
from tether.node.rtc.ice import (
    IceConfigError,
    IceSettings,
    TurnServer,
    install_host_allowlist,
    parse_host_addresses,
)


def test_the_allowlist_gives_exactly_the_listed_addresses_this_machine_has() -> None:
    try:
        install_host_allowlist(["127.0.0.1", "203.0.113.77"])
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(False, True) == []
    finally:
        install_host_allowlist([])
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, False)  # aioice's own


def test_host_addresses_parse_from_flags_and_comma_lists() -> None:
    assert parse_host_addresses(["127.0.0.1, ::1", "127.0.0.1"]) == ("127.0.0.1", "::1")
    with pytest.raises(IceConfigError, match="not an IP address"):
        parse_host_addresses(["localhost"])


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_rtc_arguments(parser)
    return parser.parse_args(argv)


def test_node_run_reads_rtc_flags_then_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_RTC_HOST_ADDRESSES", "10.0.0.5,127.0.0.1")
    monkeypatch.setenv("TETHER_RTC_TURN_CREDENTIAL", "s3cret")
    config = rtc_config(_args("--rtc-stun", "stun:stun.example:3478",
                              "--rtc-turn", "turn:turn.example:3478",
                              "--rtc-turn-username", "u"))
    assert config["rtc_host_addresses"] == ("10.0.0.5", "127.0.0.1")
    assert config["rtc_turn_credential"] == "s3cret"
    flags = rtc_config(_args("--rtc-host-address", "127.0.0.1"))
    assert flags["rtc_host_addresses"] == ("127.0.0.1",)
    with pytest.raises(SystemExit) as exited:
        rtc_config(_args("--rtc-stun", "http://x"))
    assert exited.value.code == 2


def test_ice_settings_become_aiortc_ice_servers() -> None:
    servers = IceSettings(stun_urls=("stun:a:3478",),
                          turn=(TurnServer("turn:b:3478", "u", "p"),)
                          ).rtc_configuration().iceServers
    assert servers is not None
    assert [s.urls for s in servers] == ["stun:a:3478", "turn:b:3478"]
    assert servers[1].username == "u" and servers[1].credential == "p"
