"""Strict checks of Ed25519 encodings: the one place that decides which public keys and
signatures Tether accepts (PROTOCOL.md §4, §8; docs/protocol.md "Keys").

Pure integer arithmetic on edwards25519 (RFC 8032 §5.1), no I/O. OpenSSL verifies the
signature equation; these checks run before it and refuse what OpenSSL lets through.

Rule 1: an encoding is *canonical*: its y coordinate (the low 255 bits, little-endian) is
below p = 2^255 - 19, and the sign bit is clear when x = 0 (no "negative zero").
Rule 2: a point is not of *small order*: none of the 8 points of the torsion subgroup
(order 1, 2, 4 or 8), whatever the sign bit. A key of small order verifies a forged
signature with probability 1/8 or better and no private key (the issue 11 attack: an
all-zero key and a constant signature were welcomed). Their y coordinates are derived below
from the curve equation, not copied.
Rule 3: a public key also decodes to a point on the curve (enrollment refuses garbage
before it is stored, rather than at every hello).
Rule 4: a signature is ``R || S`` with R under Rules 1-2 and the scalar S < L (the group
order), so that no signature has a second encoding.

Mixed-order keys (a large point plus a torsion component) are not refused: that needs a
full scalar multiplication, and such a key gives a forger nothing without its private key;
libsodium (``crypto_sign_verify_detached``) draws the same line.
"""

from __future__ import annotations

from .errors import BadFrame

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # order of the base point
D = -121665 * pow(121666, -1, P) % P  # the curve: -x^2 + y^2 = 1 + d x^2 y^2
SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1
KEY_BYTES = 32
SIGNATURE_BYTES = 64
_Y_MASK = (1 << 255) - 1

_Point = tuple[int, int]
_IDENTITY: _Point = (0, 1)


def _sqrt(v: int) -> int | None:
    """A square root of ``v`` mod p, or None when there is none (p = 5 mod 8)."""
    x = pow(v, (P + 3) // 8, P)
    if x * x % P != v % P:
        x = x * SQRT_M1 % P
    return x if x * x % P == v % P else None


def _x_of(y: int) -> int | None:
    """The x >= 0 (even root) with (x, y) on the curve, or None."""
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    return _sqrt(u * pow(v, P - 2, P))


def _add(a: _Point, b: _Point) -> _Point:
    """Affine point addition (complete for edwards25519: a = -1 is a square, d is not)."""
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P)


def _torsion_ys() -> frozenset[int]:
    """The y coordinates of the 8 points of order dividing 8.

    A point T of order 8 doubles to one of order 4, (±sqrt(-1), 0); the doubling's y is
    (x^2 + y^2) / (2 + x^2 - y^2), zero when x^2 = -y^2, which with the curve equation gives
    d y^4 + 2 y^2 - 1 = 0, so y^2 = (-1 ± sqrt(1 + d)) / d. The multiples of a T so found
    are the whole subgroup; each is checked to be on the curve and [8]T to be the identity.
    """
    root = _sqrt(1 + D)
    assert root is not None
    for y2 in ((-1 + root) * pow(D, P - 2, P) % P, (-1 - root) * pow(D, P - 2, P) % P):
        y = _sqrt(y2)
        x = None if y is None else _x_of(y)
        if y is None or x is None:
            continue
        points = [_IDENTITY]
        for _ in range(7):
            points.append(_add(points[-1], (x, y)))
        assert _add(points[-1], (x, y)) == _IDENTITY and len(set(points)) == 8
        return frozenset(point[1] for point in points)
    raise AssertionError("edwards25519 has a point of order 8")


SMALL_ORDER_YS = _torsion_ys()


def _check_point(raw: bytes, what: str, *, decode: bool) -> None:
    """Rules 1-2 (and 3 when ``decode``) for a 32-byte point encoding; raises BadFrame."""
    y = int.from_bytes(raw, "little") & _Y_MASK
    if y >= P:
        raise BadFrame(f"{what} is not a canonical Ed25519 encoding (y >= 2^255 - 19)")
    if y in SMALL_ORDER_YS:  # every sign-bit variant, negative zero included
        raise BadFrame(f"{what} is a point of small order, which proves nothing")
    if decode and _x_of(y) is None:
        raise BadFrame(f"{what} is not a point on the Ed25519 curve")


def check_ed25519_public_key(raw: object) -> bytes:
    """``raw`` as bytes when it is 32 bytes encoding an acceptable Ed25519 public key
    (Rules 1-3). Raises :class:`BadFrame` (HTTP 400 ``invalid_request`` at enrollment,
    close 4401 at hello) naming the rule it broke. Use it wherever a key is accepted."""
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_BYTES:
        raise BadFrame(f"an Ed25519 public key is {KEY_BYTES} raw bytes")
    _check_point(bytes(raw), "the public key", decode=True)
    return bytes(raw)


def check_key_form(raw: object) -> bytes:
    """Rules 1-2 only, for a key already stored (at every hello): no square root, so cheap;
    a key off the curve is refused by the verifier itself. Raises :class:`BadFrame`."""
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_BYTES:
        raise BadFrame(f"an Ed25519 public key is {KEY_BYTES} raw bytes")
    _check_point(bytes(raw), "the public key", decode=False)
    return bytes(raw)


def check_ed25519_signature(sig: object) -> bytes:
    """``sig`` as bytes when its form is acceptable (Rule 4), before any verification.
    Raises :class:`BadFrame`."""
    if not isinstance(sig, bytes | bytearray) or len(sig) != SIGNATURE_BYTES:
        raise BadFrame(f"an Ed25519 signature is {SIGNATURE_BYTES} bytes")
    _check_point(bytes(sig[:32]), "the signature's R", decode=False)
    if int.from_bytes(sig[32:], "little") >= L:
        raise BadFrame("the signature's S is not below the group order")
    return bytes(sig)
