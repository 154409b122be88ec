"""``tether controller run``'s media-plane options for the dashboard (docs/operations.md
"The dashboard's ICE settings"): flags, then ``TETHER_*`` environment, then defaults (none:
the browser offers host candidates only), read once into ControllerConfig fields."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from typing import Any

# stun:/stuns:/turn:/turns: then a host[:port][?transport=udp|tcp], nothing else: the URL
# goes to every operator's browser as RTCIceServer.urls
_ICE_URL = re.compile(r"(stuns?|turns?):[A-Za-z0-9.\-\[\]:]{1,300}(\?transport=(udp|tcp))?")


def add_rtc_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--rtc-ice-server", action="append", default=[], metavar="URL",
                       help="a STUN or TURN server for the dashboard's media page, "
                            "stun:host:port or turn:host:port (repeatable; env "
                            "TETHER_RTC_ICE_SERVERS, comma-separated); default none: host "
                            "candidates only")
    serve.add_argument("--rtc-host-address", action="append", default=[], metavar="IP",
                       help="the media page sends only host candidates from these addresses "
                            "(repeatable; env TETHER_RTC_BROWSER_HOST_ADDRESSES, "
                            "comma-separated); 127.0.0.1 keeps the browser's media on "
                            "loopback; default: every candidate the browser gathers")
    serve.add_argument("--rtc-ice-username",
                       default=os.environ.get("TETHER_RTC_ICE_USERNAME"),
                       help="the TURN servers' username (env TETHER_RTC_ICE_USERNAME), with "
                            "the credential in env TETHER_RTC_ICE_CREDENTIAL; both are given "
                            "to every operator's browser")


def rtc_config(args: argparse.Namespace) -> dict[str, Any]:
    """ControllerConfig keyword arguments; a bad URL exits 2 with what to fix."""
    urls = args.rtc_ice_server or [u.strip() for u in
                                   os.environ.get("TETHER_RTC_ICE_SERVERS", "").split(",")
                                   if u.strip()]
    for url in urls:
        if not _ICE_URL.fullmatch(url):
            print(f"error: ICE server {url[:80]!r} must be stun:host[:port] or "
                  "turn:host[:port][?transport=udp|tcp] (or stuns:/turns:)", file=sys.stderr)
            raise SystemExit(2)  # a usage error (STYLE.md 12)
    hosts = args.rtc_host_address or [
        a.strip() for a in os.environ.get("TETHER_RTC_BROWSER_HOST_ADDRESSES", "").split(",")
        if a.strip()]
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            print(f"error: --rtc-host-address {host[:80]!r} must be an IP address",
                  file=sys.stderr)
            raise SystemExit(2) from None
    return {"rtc_ice_servers": tuple(urls), "rtc_host_addresses": tuple(hosts),
            "rtc_ice_username": args.rtc_ice_username,
            "rtc_ice_credential": os.environ.get("TETHER_RTC_ICE_CREDENTIAL")}
