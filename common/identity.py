"""The node identity files shared by the node runtime (which writes them at enrollment) and
the sidecar (which signs hellos with the key): ``node.key`` (32 raw Ed25519 private-key
bytes, mode 0600) and ``node.json`` (node id, controller URL and id, labels)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.protocol.errors import TetherError
from tether.protocol.signing import load_private_key


class NotEnrolled(TetherError):
    default_code = "not_enrolled"


@dataclass(frozen=True, slots=True)
class Identity:
    node_id: str
    controller_url: str
    controller_id: str
    key: Ed25519PrivateKey
    labels: dict[str, str] = field(default_factory=dict)
    # How the sidecar reaches the controller: fallback_urls, ca_file, pins (sha256 hex of
    # the controller certificate), proxy (an http:// CONNECT proxy URL, or none for the
    # HTTPS_PROXY/NO_PROXY environment).
    transport: dict[str, Any] = field(default_factory=dict)


def load_identity(state_dir: Path) -> Identity:
    meta_path, key_path = state_dir / "node.json", state_dir / "node.key"
    if not meta_path.exists() or not key_path.exists():
        raise NotEnrolled(f"no enrolled node in {state_dir}; run 'tether node enroll "
                          "--controller URL --token JOIN --node-id ID' first")
    meta = json.loads(meta_path.read_text())
    return Identity(node_id=meta["node_id"], controller_url=meta["controller_url"],
                    controller_id=meta.get("controller_id", ""),
                    key=load_private_key(key_path.read_bytes()),
                    labels=dict(meta.get("labels") or {}),
                    transport=dict(meta.get("transport") or {}))
