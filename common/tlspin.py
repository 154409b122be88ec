"""Certificate pinning shared by everything that dials the controller over TLS.

A pin is the SHA-256 (hex) of the controller's certificate in DER. :func:`pinned_context`
builds an :class:`ssl.SSLContext` that verifies the chain against the system store or a CA
bundle, as any context does, and then checks the pin **inside the handshake**: the socket
(or, for asyncio and TLS-in-TLS, the SSL object) fails its handshake with
:class:`PinMismatch` before the caller gets it, so not one byte of a request (a join token,
say) is written to a server that matches no pin.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable
from typing import Any


class PinMismatch(ssl.SSLCertVerificationError):
    """The peer's certificate matched no configured pin; ``str()`` says which it was."""


def cert_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def normalize_pins(pins: Iterable[str]) -> frozenset[str]:
    """Pins as written by operators (any case, ``:`` separators allowed) as lowercase hex."""
    return frozenset(p.strip().lower().replace(":", "") for p in pins if p.strip())


def pin_mismatch(der: bytes | None, pins: frozenset[str]) -> str | None:
    """None when the certificate ``der`` matches a pin, else the reason, in one line."""
    got = cert_sha256(der) if der else "none"
    if got in pins:
        return None
    return f"controller certificate sha256 {got} matches no configured pin"


def _check(conn: ssl.SSLSocket | ssl.SSLObject, pins: frozenset[str]) -> None:
    reason = pin_mismatch(conn.getpeercert(binary_form=True), pins)
    if reason is not None:
        raise PinMismatch(reason)


def pinned_context(*, ca_file: str | None, pins: Iterable[str]) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` (or the system store) whose handshakes fail
    with :class:`PinMismatch` unless the peer certificate matches one of ``pins``. With no
    pins it is the plain default context."""
    context = ssl.create_default_context(cafile=ca_file)
    wanted = normalize_pins(pins)
    if not wanted:
        return context

    class PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, *args: Any, **kwargs: Any) -> None:
            super().do_handshake(*args, **kwargs)
            _check(self, wanted)

    class PinnedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()  # raises SSLWantReadError until the handshake is done
            _check(self, wanted)

    context.sslsocket_class = PinnedSocket
    context.sslobject_class = PinnedObject
    return context
