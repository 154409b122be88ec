"""ICE settings of the node's peers: STUN/TURN servers and the host-address allowlist.

The allowlist is applied in exactly one place, :func:`install_host_allowlist`, which
replaces ``aioice.ice.get_host_addresses`` (the function aioice's ``Connection`` calls to
list host candidates; aiortc has no setting for it). Why a patch: aioice always skips
127.0.0.1, so loopback-only ICE (every test, and a node behind a single private address)
cannot be configured otherwise. With an allowlist, host candidates are exactly the
allowlisted addresses this machine has (an address listed but absent is left out); with
none, aioice's own choice stands. The patch is process-wide, as aioice's function is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aioice.ice
import ifaddr
from aiortc import RTCConfiguration, RTCIceServer

from tether.protocol.errors import TetherError

_ORIGINAL: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


class IceConfigError(TetherError):
    default_code = "invalid_request"


@dataclass(frozen=True, slots=True)
class TurnServer:
    url: str
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class IceSettings:
    """What the node's peers gather: host candidates from ``host_addresses`` (empty:
    aioice's choice), server-reflexive from ``stun_urls``, relayed from ``turn``."""

    host_addresses: tuple[str, ...] = ()
    stun_urls: tuple[str, ...] = ()
    turn: tuple[TurnServer, ...] = ()

    def rtc_configuration(self) -> RTCConfiguration:
        servers = [RTCIceServer(urls=url) for url in self.stun_urls]
        servers += [RTCIceServer(urls=t.url, username=t.username, credential=t.credential)
                    for t in self.turn]
        return RTCConfiguration(iceServers=servers)


def parse_host_addresses(values: Sequence[str]) -> tuple[str, ...]:
    """Each value may hold several addresses separated by commas (the environment form);
    every one must be an IP address. Order kept, duplicates dropped."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                address = str(ipaddress.ip_address(part))
            except ValueError:
                raise IceConfigError(f"rtc host address {part!r} is not an IP address; "
                                     "give addresses like 127.0.0.1 or 10.0.0.5") from None
            if address not in out:
                out.append(address)
    return tuple(out)


def check_ice_url(url: str, schemes: tuple[str, ...]) -> str:
    if not url.startswith(tuple(s + ":" for s in schemes)) or len(url) > 512:
        raise IceConfigError(f"ICE server {url!r} must start with {' or '.join(schemes)}:")
    return url


def machine_addresses() -> set[str]:
    """Every IP address of this machine's interfaces, loopback included."""
    found: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            found.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    return found


def install_host_allowlist(addresses: Sequence[str]) -> None:
    """Make every ICE agent of this process offer exactly the allowlisted addresses it
    has as host candidates; an empty allowlist restores aioice's own choice."""
    if not addresses:
        aioice.ice.get_host_addresses = _ORIGINAL
        return
    allowed = tuple(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        present = machine_addresses()
        return [a for a in allowed if a in present
                and (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)]

    aioice.ice.get_host_addresses = get_host_addresses  # type: ignore[assignment]
