"""Ed25519 hello signing and verification (PROTOCOL.md §4).

The signed message binds the challenge nonce, the controller and the node:
``b"tether.v1.hello\\x00" + nonce + b"\\x00" + controller_id + b"\\x00" + node_id``.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

HELLO_CONTEXT = b"tether.v1.hello\x00"


def hello_message(nonce: bytes, controller_id: str, node_id: str) -> bytes:
    return HELLO_CONTEXT + nonce + b"\x00" + controller_id.encode() + b"\x00" + node_id.encode()


def sign_hello(private_key: Ed25519PrivateKey, nonce: bytes, controller_id: str,
               node_id: str) -> bytes:
    return private_key.sign(hello_message(nonce, controller_id, node_id))


def verify_hello(public_key_raw: bytes, sig: bytes, nonce: bytes, controller_id: str,
                 node_id: str) -> bool:
    """True only for a valid signature by ``public_key_raw`` (32 raw bytes)."""
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key_raw)
        key.verify(sig, hello_message(nonce, controller_id, node_id))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_raw(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)


def private_key_raw(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())


def load_private_key(raw: bytes) -> Ed25519PrivateKey:
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 private key is 32 raw bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
