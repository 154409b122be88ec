"""Strict Ed25519 (issue 11 item 1): keys and signature points of small order, and
non-canonical encodings, are refused; OpenSSL alone accepts some of them.

The small-order points are derived here a second way (by multiplying curve points by the
group order L, so only the torsion part is left), independently of ``protocol/keys.py``,
and cross-checked against libsodium's published blacklist."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.protocol.errors import BadFrame
from tether.protocol.keys import (
    SMALL_ORDER_YS,
    D,
    L,
    P,
    check_ed25519_public_key,
    check_ed25519_signature,
    check_key_form,
)
from tether.protocol.signing import (
    hello_message,
    load_private_key,
    public_key_raw,
    sign_hello,
    verify_hello,
    verify_strict,
)

PROPERTY = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
NONCE = bytes(range(200, 232))

# -- independent edwards25519 arithmetic (projective-free, slow, obviously right) ----------

Point = tuple[int, int]


def add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2
    return ((x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P)


def mul(n: int, a: Point) -> Point:
    out: Point = (0, 1)
    while n:
        if n & 1:
            out = add(out, a)
        a, n = add(a, a), n >> 1
    return out


def recover_x(y: int) -> int | None:
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if x * x % P != x2:
        x = x * pow(2, (P - 1) // 4, P) % P
    return x if x * x % P == x2 else None


def encode(point: Point, *, sign: int | None = None) -> bytes:
    x, y = point
    bit = x & 1 if sign is None else sign
    return (y | bit << 255).to_bytes(32, "little")


def torsion_points() -> set[Point]:
    """[L]Q for curve points Q is in the torsion subgroup; collect until all 8 are found."""
    found: set[Point] = set()
    y = 2
    while len(found) < 8:
        x = recover_x(y)
        if x is not None:
            t = mul(L, (x, y))
            s: Point = (0, 1)
            for _ in range(8):
                s = add(s, t)
                found.add(s)
        y += 1
    return found


TORSION = sorted(torsion_points())
# libsodium's blacklist (ed25519_is_on_main_subgroup / has_small_order), canonical encodings
LIBSODIUM_SMALL_ORDER = {
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
}


def every_small_order_encoding() -> list[bytes]:
    """Each torsion point with both sign bits, and with y + p where that still fits."""
    out = []
    for x, y in TORSION:
        for y_enc in (y, y + P):
            if y_enc < 1 << 255:
                for sign in (0, 1):
                    out.append(encode((x, y_enc), sign=sign))
    return sorted(set(out))


SMALL = every_small_order_encoding()


def openssl_accepts(key: bytes, sig: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# -- the small-order set --------------------------------------------------------------------

def test_the_torsion_subgroup_has_eight_points_of_order_dividing_eight() -> None:
    assert len(TORSION) == 8
    assert all(mul(8, t) == (0, 1) for t in TORSION)
    assert sorted(mul(n, t) == (0, 1) for t in TORSION for n in (1, 2, 4)).count(True) == 1 + 2 + 4


def test_the_module_derives_the_same_small_order_points_as_an_independent_derivation() -> None:
    assert {y for _, y in TORSION} == SMALL_ORDER_YS
    assert {encode((0, y), sign=0).hex() for y in SMALL_ORDER_YS} == LIBSODIUM_SMALL_ORDER


@pytest.mark.parametrize("key", SMALL, ids=lambda k: k.hex()[:8] + ".." + k.hex()[-2:])
def test_enrollment_refuses_every_encoding_of_a_small_order_key(key: bytes) -> None:
    with pytest.raises(BadFrame):
        check_ed25519_public_key(key)
    with pytest.raises(BadFrame):
        check_key_form(key)


def test_the_all_zero_key_of_the_issue_is_refused_with_a_reason_that_says_why() -> None:
    with pytest.raises(BadFrame, match="small order"):
        check_ed25519_public_key(bytes(32))


@pytest.mark.parametrize("y", range(P, 1 << 255))
def test_every_non_canonical_y_is_refused_as_a_key(y: int) -> None:
    for sign in (0, 1):
        with pytest.raises(BadFrame, match=r"canonical|small order"):
            check_ed25519_public_key((y | sign << 255).to_bytes(32, "little"))


def test_a_key_that_is_not_on_the_curve_is_refused_at_enrollment() -> None:
    y = next(y for y in range(2, 100) if recover_x(y) is None)
    with pytest.raises(BadFrame, match="not a point"):
        check_ed25519_public_key(y.to_bytes(32, "little"))


@pytest.mark.parametrize("value", [b"", bytes(31), bytes(33), "a" * 32, None, 0])
def test_a_key_of_the_wrong_type_or_length_is_refused(value: object) -> None:
    with pytest.raises(BadFrame):
        check_ed25519_public_key(value)


@PROPERTY
@given(st.binary(min_size=32, max_size=32))
def test_every_real_key_is_accepted(seed: bytes) -> None:
    raw = public_key_raw(load_private_key(seed))
    assert check_ed25519_public_key(raw) == raw
    assert verify_hello(raw, sign_hello(load_private_key(seed), NONCE, "ctl", "n"),
                        NONCE, "ctl", "n")


# -- the attack: small-order key, crafted signature -----------------------------------------

@pytest.mark.parametrize("key", SMALL, ids=lambda k: k.hex()[:8] + ".." + k.hex()[-2:])
def test_no_signature_with_a_small_order_r_and_s_zero_verifies_a_hello(key: bytes) -> None:
    for r in SMALL:
        assert not verify_hello(key, r + bytes(32), NONCE, "ctl-1", "node-a")
    assert not verify_hello(key, bytes(64), NONCE, "ctl-1", "node-a")


def test_openssl_alone_accepts_a_forged_hello_for_the_all_zero_key() -> None:
    """The attack of the issue, against the verifier without the strict checks: some
    torsion R with S = 0 verifies, with no private key. verify_hello refuses it."""
    message = hello_message(NONCE, "ctl-1", "node-a")
    forged = [r + bytes(32) for r in SMALL if openssl_accepts(bytes(32), r + bytes(32),
                                                              message)]
    assert forged, "OpenSSL changed: it now refuses small-order keys itself"
    assert not any(verify_hello(bytes(32), sig, NONCE, "ctl-1", "node-a") for sig in forged)


def test_the_identity_key_with_the_identity_r_verifies_any_message_under_openssl_alone() -> None:
    identity = (1).to_bytes(32, "little")
    message = hello_message(NONCE, "ctl-1", "node-a")
    assert openssl_accepts(identity, identity + bytes(32), message)
    assert not verify_strict(identity, identity + bytes(32), message)


def test_a_small_order_r_is_refused_even_with_a_real_key() -> None:
    with pytest.raises(BadFrame, match="R"):
        check_ed25519_signature((1).to_bytes(32, "little") + bytes(32))


def test_s_at_or_above_the_group_order_is_refused() -> None:
    key = load_private_key(bytes(32))
    sig = sign_hello(key, NONCE, "ctl-1", "node-a")
    s = int.from_bytes(sig[32:], "little")
    malleated = sig[:32] + (s + L).to_bytes(32, "little")
    with pytest.raises(BadFrame, match="S"):
        check_ed25519_signature(malleated)
    assert not verify_hello(public_key_raw(key), malleated, NONCE, "ctl-1", "node-a")
    assert check_ed25519_signature(sig[:32] + (L - 1).to_bytes(32, "little"))


@pytest.mark.parametrize("value", [b"", bytes(63), bytes(65), "x" * 64, None])
def test_a_signature_of_the_wrong_type_or_length_never_verifies(value: object) -> None:
    assert not verify_strict(public_key_raw(load_private_key(bytes(32))), value,  # type: ignore[arg-type]
                             b"m")


# -- ed25519-speccheck (novifinancial/ed25519-speccheck cases.json, 15 vectors) --------------
# Strict verification (libsodium's column of the project's results table) accepts only #6:
# 0-5 have a small-order A or R, 7 passes only cofactored, 8 needs pre-reduction, 9-10 have
# S >= L, 11-12 a non-canonical (negative zero) R, 13-14 a non-canonical A.

SPECCHECK = [
    ("2a66241a42a9ee12994d8068dcf1bb7dfc6637b45450acd43711f637fa5080fc",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
     "0000000000000000000000000000000000000000000000000000000000000000"),
    ("8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
     "0000000000000000000000000000000000000000000000000000000000000000"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
     "182ef1a5b928da07fec769cc8a12db6bcf70dab3f3227fa315e9d5e3e01a3405"),
    ("aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
     "8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f"
     "87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed512"
     "5ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7"
     "e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e"
     "547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa1942"
     "7e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "ca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908"),
    ("e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
]


@pytest.mark.parametrize("index", range(len(SPECCHECK)))
def test_strict_verification_accepts_only_the_speccheck_vector_with_no_weak_part(
        index: int) -> None:
    message, key, sig = (bytes.fromhex(h) for h in SPECCHECK[index])
    assert verify_strict(key, sig, message) is (index == 6)


def test_openssl_alone_accepts_speccheck_vectors_that_strict_verification_refuses() -> None:
    """Why the strict checks exist: the vectors with a small-order A or R pass OpenSSL."""
    loose = [i for i, (m, k, s) in enumerate(SPECCHECK)
             if openssl_accepts(bytes.fromhex(k), bytes.fromhex(s), bytes.fromhex(m))]
    assert {1, 3, 5} <= set(loose)
    assert not any(verify_strict(bytes.fromhex(SPECCHECK[i][1]), bytes.fromhex(SPECCHECK[i][2]),
                                 bytes.fromhex(SPECCHECK[i][0])) for i in loose if i != 6)
