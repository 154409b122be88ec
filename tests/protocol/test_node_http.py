"""A node's signed HTTP requests (protocol/node_http.py): the header parses only whole,
the signature binds method, path and time, and the time must be fresh."""

from __future__ import annotations

import base64

import pytest

from tether.protocol.errors import AuthError
from tether.protocol.node_http import (
    WINDOW_MS,
    node_authorization,
    parse_node_authorization,
)
from tether.protocol.signing import generate_private_key, public_key_raw

NOW = 1_800_000_000_000
KEY = generate_private_key()
PATH = "/api/v1/bundles/web/3/file"


def signed(method: str = "GET", path: str = PATH, at: int = NOW) -> str:
    return node_authorization(KEY, "n-1", method, path, at)


def test_a_header_the_node_signed_verifies_for_its_method_path_and_time() -> None:
    auth = parse_node_authorization(signed())
    assert auth is not None and auth.node_id == "n-1" and auth.unix_ms == NOW
    auth.verify(public_key_raw(KEY), "GET", PATH, now_ms=NOW + WINDOW_MS)


def test_another_scheme_is_not_a_node_header() -> None:
    assert parse_node_authorization("Bearer abc") is None
    assert parse_node_authorization("") is None


@pytest.mark.parametrize("header", [
    "Tether-Node n-1", "Tether-Node n-1:1:", "Tether-Node N_1:1:" + "A" * 86 + "==",
    "Tether-Node n-1:12x:" + "A" * 86 + "==", "Tether-Node n-1:1:" + "A" * 85 + "===",
    "Tether-Node n-1:1:" + "!" * 86 + "==", "Tether-Node n-1:1:AAAA",
    "Tether-Node n-1:" + "9" * 16 + ":" + "A" * 86 + "==",
    "Tether-Node n-1:1:" + "A" * 86 + "==:extra",
])
def test_a_malformed_node_header_is_refused(header: str) -> None:
    with pytest.raises(AuthError) as err:
        parse_node_authorization(header)
    assert err.value.code == "auth_failed"


@pytest.mark.parametrize(("method", "path", "key_raw", "now"), [
    ("POST", PATH, None, NOW),  # another method
    ("GET", "/api/v1/bundles/web/4/file", None, NOW),  # another path
    ("GET", PATH, public_key_raw(generate_private_key()), NOW),  # another key
    ("GET", PATH, None, NOW + WINDOW_MS + 1),  # stale
    ("GET", PATH, None, NOW - WINDOW_MS - 1),  # from the future
    ("GET", PATH, b"\x00" * 32, NOW),  # a small-order key
], ids=["another-method", "another-path", "another-key", "stale", "future", "small-order-key"])
def test_a_signature_for_anything_else_does_not_verify(method: str, path: str,
                                                       key_raw: bytes | None,
                                                       now: int) -> None:
    auth = parse_node_authorization(signed())
    assert auth is not None
    with pytest.raises(AuthError):
        auth.verify(key_raw or public_key_raw(KEY), method, path, now_ms=now)


def test_a_flipped_bit_in_the_signature_does_not_verify() -> None:
    header = signed()
    sig = bytearray(base64.b64decode(header.rsplit(":", 1)[1]))
    sig[0] ^= 1
    auth = parse_node_authorization(header.rsplit(":", 1)[0] + ":"
                                    + base64.b64encode(bytes(sig)).decode())
    assert auth is not None
    with pytest.raises(AuthError):
        auth.verify(public_key_raw(KEY), "GET", PATH, now_ms=NOW)
