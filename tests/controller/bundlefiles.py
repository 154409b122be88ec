"""Bundle files for the controller's tests, built by hand in the fixed format
(docs/protocol.md "Bundles"), so that these tests do not depend on ``tether bundle build``
and can also build the malformed ones."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.protocol.signing import generate_private_key, public_key_raw

BUNDLE_CONTEXT = b"tether.v1.bundle\x00"


def canonical(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def key_id(key: Ed25519PrivateKey) -> str:
    return hashlib.sha256(public_key_raw(key)).hexdigest()[:16]


def app_tar_gz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def make_bundle(name: str = "demo", version: int = 1, *, kind: str = "app",
                key: Ed25519PrivateKey | None = None, payload: bytes = b"",
                files: dict[str, bytes] | None = None, **overrides: Any) -> bytes:
    """A signed bundle file; ``payload`` pads the app (to make it big), ``overrides``
    replace manifest fields after the honest ones are computed."""
    key = key or generate_private_key()
    files = files or {"tether-app.toml": b'argv = ["./run"]\nrestart = "never"\n',
                      "run": b"#!/bin/sh\nexit 0\n" + payload}
    app = app_tar_gz(files)
    manifest: dict[str, Any] = {
        "format": 1, "name": name, "kind": kind, "version": version,
        "sha256": hashlib.sha256(app).hexdigest(), "size": len(app),
        "files": {path: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                         "mode": 0o755} for path, data in files.items()},
        "min_runner_version": "0.1.0",
        "policy": {"kinds": ["exec"], "executables": [], "limits": {}},
        "created_at": "2026-01-01T00:00:00Z", "expires_at": "2027-01-01T00:00:00Z",
    }
    manifest.update(overrides)
    raw = canonical(manifest)
    sigs = [{"key_id": key_id(key),
             "sig": base64.b64encode(key.sign(BUNDLE_CONTEXT + raw)).decode()}]
    return tar_of([("manifest.json", raw), ("signatures.json", json.dumps(sigs).encode()),
                   ("app.tar.gz", app)])


def members(bundle: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:") as tar:
        out = []
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out.append((m.name, f.read() if f is not None else b""))
        return out
