"""``tether node run``'s media-plane options (docs/operations.md "ICE settings"): flags,
then ``TETHER_*`` environment, then defaults, read once into NodeConfig fields."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn


def add_rtc_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--rtc-host-address", action="append", default=[], metavar="IP",
                     help="offer ICE host candidates only from this address (repeatable; "
                          "env TETHER_RTC_HOST_ADDRESSES, comma-separated); 127.0.0.1 "
                          "keeps media on loopback")
    run.add_argument("--rtc-stun", action="append", default=[], metavar="URL",
                     help="a STUN server, stun:host:port (repeatable; env TETHER_RTC_STUN)")
    run.add_argument("--rtc-turn", action="append", default=[], metavar="URL",
                     help="a TURN server, turn:host:port or turns:... (repeatable; env "
                          "TETHER_RTC_TURN), with --rtc-turn-username and the credential in "
                          "env TETHER_RTC_TURN_CREDENTIAL")
    run.add_argument("--rtc-turn-username", default=os.environ.get("TETHER_RTC_TURN_USERNAME"),
                     help="the TURN servers' username (env TETHER_RTC_TURN_USERNAME)")
    run.add_argument("--rtc-video", default=os.environ.get("TETHER_RTC_VIDEO", "pattern"),
                     help="what the node's video sends: pattern (default), loopback, or a "
                          "file or device for aiortc's MediaPlayer")
    run.add_argument("--max-rtc-peers", type=int, default=16,
                     help="WebRTC peers open at once; one more is refused")
    run.add_argument("--rtc-ice-timeout", type=float,
                     default=float(os.environ.get("TETHER_RTC_ICE_TIMEOUT", "10")),
                     metavar="SECONDS",
                     help="file.send (tether cp node to node): how long ICE may take to "
                          "connect before the controller's relay takes over (default 10; "
                          "env TETHER_RTC_ICE_TIMEOUT)")


def _usage(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)  # a usage error (STYLE.md 12)


def _listed(flags: list[str], env: str) -> list[str]:
    return flags or [v for v in os.environ.get(env, "").split(",") if v.strip()]


def rtc_config(args: argparse.Namespace) -> dict[str, Any]:
    """NodeConfig keyword arguments; a bad address or URL exits 2 with what to fix."""
    from tether.node.rtc.ice import IceConfigError, check_ice_url, parse_host_addresses

    try:
        hosts = parse_host_addresses(_listed(args.rtc_host_address,
                                             "TETHER_RTC_HOST_ADDRESSES"))
        stun = tuple(check_ice_url(u.strip(), ("stun", "stuns"))
                     for u in _listed(args.rtc_stun, "TETHER_RTC_STUN"))
        turn = tuple(check_ice_url(u.strip(), ("turn", "turns"))
                     for u in _listed(args.rtc_turn, "TETHER_RTC_TURN"))
    except IceConfigError as exc:
        _usage(exc.message)
    if not 1 <= args.max_rtc_peers <= 1024:
        _usage("--max-rtc-peers must be 1..1024")
    if not 0 < args.rtc_ice_timeout <= 600:
        _usage("--rtc-ice-timeout must be more than 0 and at most 600 seconds")
    return {"rtc_host_addresses": hosts, "rtc_stun": stun, "rtc_turn": turn,
            "rtc_turn_username": args.rtc_turn_username,
            "rtc_turn_credential": os.environ.get("TETHER_RTC_TURN_CREDENTIAL"),
            "rtc_video": args.rtc_video, "max_rtc_peers": args.max_rtc_peers,
            "rtc_ice_timeout_s": args.rtc_ice_timeout}


def rtc_lines(rtc: Any) -> list[str]:
    """``tether node status``'s media-plane lines: one per peer, then its subflows (the
    caller makes them terminal-safe)."""
    if not isinstance(rtc, dict) or not rtc.get("peers"):
        return ["rtc         no peers"]
    lines = []
    for peer in rtc["peers"]:
        lines.append(f"rtc peer    {peer['peer_session_id']} with {peer.get('remote')}: "
                     f"{peer['state']}, ice {peer.get('ice_state')}, pair "
                     f"{peer.get('candidate_pair') or '-'}, "
                     f"{peer.get('negotiations_total', 0)} negotiations")
        for name, flow in (peer.get("subflows") or {}).items():
            lines.append(f"  {name:<9} {flow['state']:<9} in {flow['bytes_in']} B  out "
                         f"{flow['bytes_out']} B  errors {flow['errors_total']}")
    return lines
