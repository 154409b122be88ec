"""Publishing and serving bundles (docs/protocol.md §8 ``/api/v1/bundles``; the format is
docs/protocol.md "Bundles").

A publish streams the request body to a temporary file (never all in memory), at most
``max_bundle_bytes`` (past it: 413 ``frame_too_large``, nothing stored), hashing it as it
goes; :func:`inspect_bundle` then checks the file at the boundary (the tar layout, the
manifest, app.tar.gz's size and sha256 against the manifest), and the file is copied into
the store in chunks (store/bundles.py gives the rules: immutable versions, versions that
only go up, a total quota).

The controller does not verify the signatures and is not trusted to: a node runs a bundle
only when enough of the publisher keys *it* trusts signed the manifest (docs/security.md).
It records the key ids ``signatures.json`` names, as declared.

Bounds: ``max_concurrent_publishes`` publishes at once per replica (past it: 429
``rate_limited``), each holding one temporary file of at most ``max_bundle_bytes`` and one
chunk in memory; a download holds one chunk in memory at a time.

:func:`inspect_bundle` applies the format's rules from ``protocol/bundle.py`` (one parser for
the controller, the CLI and the node).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from tether.common.bodies import BodyTooLarge
from tether.protocol.bundle import BundleError, check_payload, open_payload, read_bundle
from tether.protocol.errors import InvalidRequest, TetherError

from ..store.bundles import DEFAULT_CHUNK_BYTES, BundleRecord, NewBundle

MEMBERS = ("manifest.json", "signatures.json", "app.tar.gz")
MAX_MANIFEST_BYTES = 8 << 20
MAX_SIGNATURES_BYTES = 64 << 10
MAX_SIGNATURES = 32
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_READ_BYTES = 1 << 20


class BundleRefused(InvalidRequest):
    """The file is not a bundle of the fixed format: 400 ``invalid_request`` naming why."""


class Busy(TetherError):
    default_code = "rate_limited"


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """What the controller needs of a bundle file, checked."""

    name: str
    version: int
    kind: str
    manifest: bytes  # the canonical form, as in the file
    signatures: bytes  # signatures.json as in the file
    key_ids: tuple[str, ...]  # as declared, not verified
    app_sha256: str
    app_size: int


def inspect_bundle(file: IO[bytes]) -> BundleInfo:
    """Check a bundle file (a seekable binary file at its start) at the boundary with the
    format's own rules (``protocol/bundle.py``: the tar layout, the canonical manifest, the
    signatures' shape), then hash app.tar.gz in bounded pieces against the manifest's size
    and sha256. Signatures are not verified (the module docstring says why). Raises
    BundleRefused naming the format's code. Blocking: run it in a thread."""
    try:
        parts = read_bundle(file)
        app_sha, app_size = hashlib.sha256(), 0
        payload = open_payload(file, parts)
        while piece := payload.read(_READ_BYTES):
            app_sha.update(piece)
            app_size += len(piece)
        check_payload(app_size, app_sha.hexdigest(), parts.manifest)
    except BundleError as exc:
        raise BundleRefused(f"{exc.code}: {exc.message}") from None
    manifest = parts.manifest
    signatures = json.dumps([{"key_id": s.key_id, "sig": base64.b64encode(s.sig).decode()}
                             for s in parts.signatures], separators=(",", ":")).encode()
    return BundleInfo(name=manifest.name, version=manifest.version, kind=manifest.kind,
                      manifest=parts.manifest_bytes, signatures=signatures,
                      key_ids=tuple(s.key_id for s in parts.signatures),
                      app_sha256=manifest.sha256, app_size=app_size)


class BundleStore(Protocol):
    """What :class:`BundleService` uses of the store (store/bundles.py)."""

    async def check_bundle(self, new: NewBundle, *, max_total_bytes: int | None
                           ) -> BundleRecord | None: ...

    async def put_bundle_chunk(self, blob_id: str, idx: int, data: bytes) -> None: ...

    async def drop_bundle_upload(self, blob_id: str) -> int: ...

    async def add_bundle(self, new: NewBundle, *, blob_id: str, chunk_bytes: int,
                         actor: str, max_total_bytes: int | None = None
                         ) -> tuple[BundleRecord, bool]: ...

    async def get_bundle(self, name: str, version: int) -> BundleRecord: ...

    async def list_bundles(self, *, name: str | None, before: int | None,
                           limit: int) -> list[BundleRecord]: ...

    async def bundle_chunk(self, blob_id: str, idx: int) -> bytes: ...

    async def prune_bundle_uploads(self, *, older_than_s: float = 3600.0) -> int: ...


class BundleService:
    """Publishes bundle files into the store and reads them back by byte range."""

    def __init__(self, store: BundleStore, *, max_bundle_bytes: int,
                 max_total_bytes: int | None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 spool_dir: Path | None = None, max_concurrent_publishes: int = 2) -> None:
        self.store = store
        self.max_bundle_bytes = max_bundle_bytes
        self.max_total_bytes = max_total_bytes
        self.chunk_bytes = chunk_bytes
        self.spool_dir = spool_dir
        self.max_concurrent_publishes = max_concurrent_publishes
        self._publishing = 0

    async def publish(self, body: AsyncIterator[bytes], *, declared_length: int | None,
                      actor: str) -> tuple[BundleRecord, bool]:
        """Publish the bundle file ``body`` streams (module docstring). Returns (record,
        created). Raises BodyTooLarge (413), BundleRefused (400), Conflict (409),
        QuotaExceeded (413), Busy (429); whatever it raises, nothing stays stored."""
        if declared_length is not None and declared_length > self.max_bundle_bytes:
            raise self._too_large()
        if self._publishing >= self.max_concurrent_publishes:
            raise Busy(f"{self._publishing} publishes are running on this controller; "
                       "retry in a moment")
        self._publishing += 1
        try:
            with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
                sha256, size = await self._spool(body, spool)
                spool.seek(0)
                info = await asyncio.to_thread(inspect_bundle, spool)
                new = NewBundle(name=info.name, version=info.version, kind=info.kind,
                                sha256=sha256, size=size, manifest=info.manifest,
                                signatures=info.signatures, key_ids=info.key_ids)
                have = await self.store.check_bundle(new, max_total_bytes=self.max_total_bytes)
                if have is not None:
                    return have, False
                await self.store.prune_bundle_uploads()
                return await self._store(new, spool, actor)
        finally:
            self._publishing -= 1

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"the bundle is over this controller's limit of "
                            f"{self.max_bundle_bytes} bytes (--max-bundle-bytes)")

    async def _spool(self, body: AsyncIterator[bytes], spool: IO[bytes]) -> tuple[str, int]:
        """Write ``body`` to ``spool`` through the limit, in pieces of at most one chunk;
        returns its (sha256, size)."""
        digest, size, pending = hashlib.sha256(), 0, bytearray()
        async for piece in body:
            size += len(piece)
            if size > self.max_bundle_bytes:
                raise self._too_large()
            digest.update(piece)
            pending += piece
            if len(pending) >= self.chunk_bytes:
                await asyncio.to_thread(spool.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(spool.write, bytes(pending))
        return digest.hexdigest(), size

    async def _store(self, new: NewBundle, spool: IO[bytes],
                     actor: str) -> tuple[BundleRecord, bool]:
        blob_id = "blob_" + uuid.uuid4().hex
        try:
            spool.seek(0)
            idx = 0
            while data := await asyncio.to_thread(spool.read, self.chunk_bytes):
                await self.store.put_bundle_chunk(blob_id, idx, data)
                idx += 1
            return await self.store.add_bundle(new, blob_id=blob_id,
                                               chunk_bytes=self.chunk_bytes, actor=actor,
                                               max_total_bytes=self.max_total_bytes)
        except BaseException:
            await asyncio.shield(self.store.drop_bundle_upload(blob_id))
            raise

    async def read(self, record: BundleRecord, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive of the stored file, one chunk read (and
        held) at a time. ``0 <= start <= end < record.size``."""
        idx = start // record.chunk_bytes
        at = idx * record.chunk_bytes
        while at <= end:
            data = await self.store.bundle_chunk(record.blob_id, idx)
            lo, hi = max(start - at, 0), min(end - at + 1, len(data))
            yield data[lo:hi]
            at += record.chunk_bytes
            idx += 1

