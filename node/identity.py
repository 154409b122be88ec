"""Enrollment (PROTOCOL.md §8): makes the key and writes the identity files that
:mod:`tether.common.identity` reads.

Files in the state dir: ``node.key`` (32 raw Ed25519 private-key bytes, mode 0600) and
``node.json`` (node id, controller URL and id, labels). The key is made once and reused, so
re-enrolling with a new join token keeps the same identity.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.common.identity import Identity, load_identity
from tether.common.tlspin import PinMismatch, normalize_pins, pinned_context
from tether.protocol.errors import TetherError
from tether.protocol.frames import valid_node_id
from tether.protocol.signing import (
    generate_private_key,
    load_private_key,
    private_key_raw,
    public_key_raw,
)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    path = state_dir / "node.key"
    if path.exists():
        return load_private_key(path.read_bytes())
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    key = generate_private_key()
    _write_private(path, private_key_raw(key))
    return key


def _pin_failure(exc: BaseException) -> PinMismatch | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PinMismatch):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def check_transport(controller_url: str, transport: dict[str, Any]) -> None:
    """Refuse trust settings that a URL cannot honour: a pin or a CA bundle means nothing
    over plain ``http://``, and the join token would travel in the clear to whoever answers.
    Raises TetherError (code ``invalid_request``)."""
    if not (transport.get("pins") or transport.get("ca_file")):
        return
    flag = "--pin-sha256" if transport.get("pins") else "--ca-file"
    for url in (controller_url, *(transport.get("fallback_urls") or ())):
        if not str(url).lower().startswith(("https://", "wss://")):
            raise TetherError(f"{flag} needs an https:// controller URL, not {url}: use "
                              "https://, or drop the pin and CA file", code="invalid_request")


def enroll(*, controller_url: str, join_token: str, node_id: str, state_dir: Path,
           labels: dict[str, str] | None = None, timeout_s: float = 10.0,
           transport: dict[str, Any] | None = None) -> Identity:
    """Make (or reuse) the key and enroll it; raises TetherError with the controller's
    message on refusal. ``transport`` (fallback_urls, ca_file, pins, proxy) is kept in
    node.json for the sidecar; ``ca_file``, ``pins`` and ``proxy`` apply to this request too.

    Invariant: the join token leaves the machine only over a TLS connection whose
    certificate chain verified against ``ca_file`` (or the system store) and matched a pin
    when pins are given; both are checked inside the handshake, before the request is
    written (:func:`tether.common.tlspin.pinned_context`). Nothing is written to the state
    dir when enrollment fails, except the key (made once, reused)."""
    transport = {k: v for k, v in (transport or {}).items() if v}
    if transport.get("pins"):
        transport["pins"] = sorted(normalize_pins(transport["pins"]))
    check_transport(controller_url, transport)
    ca_file = transport.get("ca_file")
    verify: Any = pinned_context(ca_file=ca_file, pins=transport.get("pins") or ()) \
        if ca_file or transport.get("pins") else True
    if not valid_node_id(node_id):
        raise TetherError("node id must match [a-z0-9][a-z0-9-]{0,62}",
                          code="invalid_request")
    key = load_or_create_key(state_dir)
    body = {"join_token": join_token, "node_id": node_id, "labels": labels or {},
            "public_key": base64.urlsafe_b64encode(public_key_raw(key)).rstrip(b"=").decode()}
    url = controller_url.rstrip("/") + "/v1/edge/enroll"
    try:
        resp = httpx.post(url, json=body, timeout=timeout_s, verify=verify,
                          proxy=transport.get("proxy"), follow_redirects=False)
    except httpx.HTTPError as exc:
        pin = _pin_failure(exc)
        if pin is not None:
            raise TetherError(f"not enrolled, the join token was not sent: {pin}; check "
                              "--pin-sha256 against the controller's certificate",
                              code="unavailable") from exc
        raise TetherError(f"cannot reach the controller at {controller_url}: {exc}",
                          code="unavailable") from exc
    if resp.status_code != 201:
        try:
            err = resp.json()["error"]
            code, message = err["code"], err["message"]
        except (ValueError, KeyError, TypeError):
            code, message = "enroll_failed", f"HTTP {resp.status_code} from {url}"
        raise TetherError(f"enrollment refused ({resp.status_code}): {message}", code=code)
    answer = resp.json()
    meta = {"node_id": node_id, "controller_url": controller_url.rstrip("/"),
            "controller_id": answer.get("controller_id", ""), "labels": labels or {},
            "transport": transport, "enrolled_at": time.time()}
    _write_private(state_dir / "node.json", json.dumps(meta, indent=2).encode())
    return load_identity(state_dir)


__all__ = ["Identity", "enroll", "load_identity", "load_or_create_key"]
