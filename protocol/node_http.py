"""A node's own HTTP requests to the controller, signed with its enrolled Ed25519 key
(docs/protocol.md "Node HTTP authentication"): how a node downloads a bundle.

The header is ``Authorization: Tether-Node <node_id>:<unix_ms>:<base64 signature>``, the
signature (standard base64, padded) over
``b"tether.v1.http\\x00" + METHOD + b"\\x00" + path + b"\\x00" + unix_ms`` (the method in
upper case, the request path as sent without its query, ``unix_ms`` the same ASCII digits
as in the header).

Rule 1: the header is parsed whole or refused (:class:`~.errors.AuthError`
``auth_failed``): a node id as enrollment allows, 1 to 15 ASCII digits, a signature that
decodes to exactly 64 bytes. Nothing else is accepted, and nothing in it is trusted until
the signature verifies.
Rule 2: ``unix_ms`` is within ``window_ms`` of the verifier's clock (either side): a
captured header opens the same path for that long at most.
Rule 3: verification is :func:`~.signing.verify_strict` (small-order keys, non-canonical
encodings and S >= L refused).

Pure: the caller passes the clock in.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import AuthError
from .frames import valid_node_id
from .signing import verify_strict

SCHEME = "Tether-Node"
HTTP_CONTEXT = b"tether.v1.http\x00"
WINDOW_MS = 60_000
_MS = re.compile(r"[0-9]{1,15}")
_B64 = re.compile(r"[A-Za-z0-9+/]{86}==")  # 64 bytes, padded


def http_message(method: str, path: str, unix_ms: int) -> bytes:
    return (HTTP_CONTEXT + method.upper().encode("ascii") + b"\x00" + path.encode()
            + b"\x00" + str(unix_ms).encode("ascii"))


def node_authorization(key: Ed25519PrivateKey, node_id: str, method: str, path: str,
                       unix_ms: int) -> str:
    """The ``Authorization`` header value a node sends for ``method path`` at ``unix_ms``."""
    sig = key.sign(http_message(method, path, unix_ms))
    return f"{SCHEME} {node_id}:{unix_ms}:{base64.b64encode(sig).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class NodeAuth:
    """A parsed ``Tether-Node`` header: not yet verified (:meth:`verify`)."""

    node_id: str
    unix_ms: int
    sig: bytes

    def verify(self, public_key_raw: bytes, method: str, path: str, *, now_ms: int,
               window_ms: int = WINDOW_MS) -> None:
        """Rules 2 and 3. Raises AuthError ``auth_failed`` naming which failed (the node
        learns nothing it did not send)."""
        if abs(now_ms - self.unix_ms) > window_ms:
            raise AuthError(f"the request's time {self.unix_ms} is more than "
                            f"{window_ms // 1000} s from the controller's ({now_ms}); "
                            "check the node's clock", code="auth_failed")
        if not verify_strict(public_key_raw, self.sig,
                             http_message(method, path, self.unix_ms)):
            raise AuthError(f"the signature does not verify with node {self.node_id}'s "
                            "enrolled key", code="auth_failed")


def parse_node_authorization(header: str) -> NodeAuth | None:
    """The header's ``Tether-Node`` credentials (Rule 1); None when the header uses
    another scheme. Raises AuthError ``auth_failed`` for a malformed one."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        return None
    parts = rest.strip().split(":")
    if len(parts) != 3:
        raise AuthError(f"a {SCHEME} header is '<node_id>:<unix_ms>:<base64 signature>'",
                        code="auth_failed")
    node_id, ms, sig_b64 = parts
    if not valid_node_id(node_id):
        raise AuthError(f"the {SCHEME} node id must match [a-z0-9][a-z0-9-]{{0,62}}",
                        code="auth_failed")
    if _MS.fullmatch(ms) is None:
        raise AuthError(f"the {SCHEME} time must be 1 to 15 digits of Unix milliseconds",
                        code="auth_failed")
    if _B64.fullmatch(sig_b64) is None:
        raise AuthError(f"the {SCHEME} signature must be the standard base64 of 64 bytes",
                        code="auth_failed")
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(f"the {SCHEME} signature is not valid base64",
                        code="auth_failed") from None
    return NodeAuth(node_id=node_id, unix_ms=int(ms), sig=sig)
