"""Bundles (docs/protocol.md §8 ``/api/v1/bundles``): published (name, version) rows and the
bundle file's bytes, stored in the database so that every replica serves them (a cluster
has no shared disk).

The bytes go in ``bundle_chunks`` rows of at most ``chunk_bytes`` each (1 MiB by default:
a row either engine stores and reads in one go) under a ``blob_id``. A publish is several
transactions, because a transaction function may await nothing but its ``tx``
(``sql.py``) and a bundle is too big for one row:

1. :meth:`BundleTransactions.check_bundle` (optional, before any byte is written): the
   answer :meth:`add_bundle` would give, so that a conflict costs no upload;
2. :meth:`put_bundle_chunk`, once per chunk, in order;
3. :meth:`add_bundle`: the one transaction that publishes. Under the name's lock
   (``bundle_names``, so the publishes of one name are serialized, whichever replica runs
   them) it applies the rules below, and either inserts the ``bundles`` row naming the
   blob or deletes the blob's chunks.

Rule 1: a (name, version) once published never changes. Publishing the same file again
(same sha256) is idempotent: the stored record is returned with ``created`` False.
Publishing a different file as a published (name, version) is ``conflict`` (409).
Rule 2: a new version of a name is greater than every version of that name ever published
(``bundle_names.max_version``), else ``conflict`` (409).
Rule 3: the sum of the stored bundles' sizes stays within ``max_total_bytes``, else
``quota_exceeded`` (413). Publishes of different names are not serialized with each other,
so two at once may together pass the quota by one bundle.
Rule 4: chunks that no ``bundles`` row names are an upload that did not finish (a replica
that died mid-publish): :meth:`prune_bundle_uploads` deletes those older than a bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tether.protocol.errors import Conflict, NotFound, TetherError

from .base import FOR_UPDATE, StoreBase, add_audit, peer_text, wall_now
from .records import _int, _text, _time, loads
from .sql import Tx

DEFAULT_CHUNK_BYTES = 1 << 20
# SUM of a BIGINT is NUMERIC on PostgreSQL (a Decimal in Python): cast back
_TOTAL = "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM bundles"


class QuotaExceeded(TetherError):
    default_code = "quota_exceeded"


@dataclass(frozen=True, slots=True)
class BundleRecord:
    """A published bundle. ``sha256`` and ``size`` are the bundle file's (what the download
    gives); the manifest's own ``sha256``/``size`` are app.tar.gz's. ``key_ids`` are the
    key ids ``signatures.json`` names: declared, not verified by the controller (nodes
    verify against the publisher keys they trust)."""

    COLUMNS = ("seq, name, version, kind, sha256, size, manifest, signatures, key_ids, "
               "blob_id, chunk_bytes, publisher, published_at")

    seq: int
    name: str
    version: int
    kind: str
    sha256: str
    size: int
    manifest: bytes
    signatures: bytes
    key_ids: tuple[str, ...]
    blob_id: str
    chunk_bytes: int
    publisher: str
    published_at: float | None

    @property
    def chunks(self) -> int:
        return -(-self.size // self.chunk_bytes)

    @classmethod
    def from_row(cls, row: Any) -> BundleRecord:
        key_ids = loads(row["key_ids"], [])
        return cls(seq=_int(row["seq"]) or 0, name=_text(row["name"]) or "",
                   version=_int(row["version"]) or 0, kind=_text(row["kind"]) or "",
                   sha256=_text(row["sha256"]) or "", size=_int(row["size"]) or 0,
                   manifest=bytes(row["manifest"]), signatures=bytes(row["signatures"]),
                   key_ids=tuple(str(k) for k in key_ids) if isinstance(key_ids, list)
                   else (),
                   blob_id=_text(row["blob_id"]) or "",
                   chunk_bytes=_int(row["chunk_bytes"]) or DEFAULT_CHUNK_BYTES,
                   publisher=_text(row["publisher"]) or "",
                   published_at=_time(row["published_at"]))


@dataclass(frozen=True, slots=True)
class NewBundle:
    """What :meth:`BundleTransactions.add_bundle` publishes: checked by the caller
    (services/bundles.py parses the file at the boundary)."""

    name: str
    version: int
    kind: str
    sha256: str
    size: int
    manifest: bytes
    signatures: bytes
    key_ids: tuple[str, ...]


async def _rules(tx: Tx, new: NewBundle, max_total_bytes: int | None
                 ) -> BundleRecord | None:
    """Rules 1-3 against what is stored: the existing record for an idempotent publish,
    None for a new one; raises Conflict or QuotaExceeded."""
    row = await tx.fetchrow(f"SELECT {BundleRecord.COLUMNS} FROM bundles "
                            "WHERE name=$1 AND version=$2", new.name, new.version)
    if row is not None:
        have = BundleRecord.from_row(row)
        if have.sha256 == new.sha256:
            return have
        raise Conflict(f"bundle {new.name} version {new.version} is already published with "
                       f"sha256 {have.sha256}; a published version never changes: build "
                       "and publish a greater version")
    top = _int(await tx.fetchval("SELECT max_version FROM bundle_names WHERE name=$1",
                                 new.name)) or 0
    if new.version <= top:
        raise Conflict(f"bundle {new.name} version {new.version} is not greater than version "
                       f"{top}, already published; versions of a name only go up")
    if max_total_bytes is not None:
        used = _int(await tx.fetchval(_TOTAL)) or 0
        if used + new.size > max_total_bytes:
            raise QuotaExceeded(f"the controller holds {used} bytes of bundles; {new.size} "
                                f"more would pass its quota of {max_total_bytes} "
                                "(--max-bundle-bytes-total)")
    return None


class BundleTransactions(StoreBase):
    """Published bundles and their bytes (module docstring)."""

    async def check_bundle(self, new: NewBundle, *, max_total_bytes: int | None
                           ) -> BundleRecord | None:
        """What :meth:`add_bundle` would answer now, without writing: the stored record
        for an idempotent publish, None for a new one. Raises Conflict, QuotaExceeded."""
        async def fn(tx: Tx) -> BundleRecord | None:
            return await _rules(tx, new, max_total_bytes)
        return await self.driver.read(fn)

    async def put_bundle_chunk(self, blob_id: str, idx: int, data: bytes) -> None:
        """Store chunk ``idx`` (0-based) of an upload; writing the same chunk again
        replaces it."""
        async def fn(tx: Tx) -> None:
            await tx.execute("INSERT INTO bundle_chunks (blob_id, idx, data, at) "
                             "VALUES ($1,$2,$3,$4) ON CONFLICT (blob_id, idx) "
                             "DO UPDATE SET data=excluded.data, at=excluded.at",
                             blob_id, idx, data, wall_now())
        await self.driver.write(fn)

    async def drop_bundle_upload(self, blob_id: str) -> int:
        """Delete an upload's chunks, unless a published bundle names them."""
        async def fn(tx: Tx) -> int:
            return await tx.execute("DELETE FROM bundle_chunks WHERE blob_id=$1 AND NOT "
                                    "EXISTS (SELECT 1 FROM bundles b WHERE b.blob_id=$1)",
                                    blob_id)
        return await self.driver.write(fn)

    async def add_bundle(self, new: NewBundle, *, blob_id: str, chunk_bytes: int,
                         actor: str, max_total_bytes: int | None = None
                         ) -> tuple[BundleRecord, bool]:
        """Publish ``new``, whose file is the chunks of ``blob_id`` (checked here: there
        must be exactly ``ceil(size / chunk_bytes)`` of them, holding ``size`` bytes).
        Returns (record, created): created False for an idempotent publish (Rule 1), whose
        chunks are then deleted. Raises Conflict (Rules 1-2, or chunks missing) or
        QuotaExceeded (Rule 3); a transaction that raises writes nothing, so the caller then
        deletes the upload (:meth:`drop_bundle_upload`)."""
        name = peer_text(new.name)

        async def fn(tx: Tx) -> tuple[BundleRecord, bool]:
            await tx.execute("INSERT INTO bundle_names (name, max_version) VALUES ($1, 0) "
                             "ON CONFLICT (name) DO NOTHING", name)
            await tx.fetchval("SELECT max_version FROM bundle_names WHERE name=$1"
                              f"{FOR_UPDATE[tx.dialect]}", name)
            have = await _rules(tx, new, max_total_bytes)
            if have is not None:
                await tx.execute("DELETE FROM bundle_chunks WHERE blob_id=$1", blob_id)
                return have, False
            got = await tx.fetchrow(
                "SELECT count(*), CAST(COALESCE(SUM(length(data)), 0) AS BIGINT) "
                "FROM bundle_chunks WHERE blob_id=$1", blob_id)
            count, stored = (0, 0) if got is None else (int(got[0]), int(got[1]))
            if int(count) != -(-new.size // chunk_bytes) or int(stored) != new.size:
                raise Conflict(f"upload {blob_id} holds {stored} bytes in {count} chunks, "
                               f"not the bundle's {new.size}; publish again")
            now = wall_now()
            await tx.execute(
                "INSERT INTO bundles (name, version, kind, sha256, size, manifest, "
                "signatures, key_ids, blob_id, chunk_bytes, publisher, published_at) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
                name, new.version, new.kind, new.sha256, new.size, new.manifest,
                new.signatures, json.dumps(list(new.key_ids)), blob_id, chunk_bytes,
                peer_text(actor), now)
            await tx.execute("UPDATE bundle_names SET max_version=$1 WHERE name=$2",
                             new.version, name)
            await add_audit(tx, actor, "bundle.publish", f"{name}/{new.version}",
                            {"sha256": new.sha256, "size": new.size, "kind": new.kind})
            return await _bundle(tx, name, new.version), True
        return await self.driver.write(fn)

    async def get_bundle(self, name: str, version: int) -> BundleRecord:
        """The published bundle. Raises NotFound."""
        name = peer_text(name)

        async def fn(tx: Tx) -> BundleRecord:
            return await _bundle(tx, name, version)
        return await self.driver.read(fn)

    async def list_bundles(self, *, name: str | None, before: int | None,
                           limit: int) -> list[BundleRecord]:
        """Newest first (by publish order ``seq``), only those with ``seq < before`` when
        given, and of ``name`` when given."""
        async def fn(tx: Tx) -> list[BundleRecord]:
            rows = await tx.fetch(
                f"SELECT {BundleRecord.COLUMNS} FROM bundles WHERE ($1::TEXT IS NULL OR "
                "name=$1) AND ($2::BIGINT IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3"
                if tx.dialect == "postgres" else
                f"SELECT {BundleRecord.COLUMNS} FROM bundles WHERE ($1 IS NULL OR "
                "name=$1) AND ($2 IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3",
                None if name is None else peer_text(name), before, limit)
            return [BundleRecord.from_row(r) for r in rows]
        return await self.driver.read(fn)

    async def bundle_chunk(self, blob_id: str, idx: int) -> bytes:
        """Chunk ``idx`` of a stored file. Raises NotFound (a bundle row always has all
        its chunks: this means the store was changed by hand)."""
        async def fn(tx: Tx) -> bytes:
            data = await tx.fetchval("SELECT data FROM bundle_chunks WHERE blob_id=$1 "
                                     "AND idx=$2", blob_id, idx)
            if data is None:
                raise NotFound(f"chunk {idx} of {blob_id} is missing from the store")
            return bytes(data)
        return await self.driver.read(fn)

    async def bundle_bytes_total(self) -> int:
        """The sum of the published bundles' sizes (what Rule 3 bounds)."""
        async def fn(tx: Tx) -> int:
            return _int(await tx.fetchval(_TOTAL)) or 0
        return await self.driver.read(fn)

    async def prune_bundle_uploads(self, *, older_than_s: float = 3600.0) -> int:
        """Rule 4: delete the chunks of unfinished uploads last written more than
        ``older_than_s`` ago; returns how many chunks went."""
        async def fn(tx: Tx) -> int:
            return await tx.execute(
                "DELETE FROM bundle_chunks WHERE at < $1 AND blob_id NOT IN "
                "(SELECT blob_id FROM bundles)", wall_now() - older_than_s)
        return await self.driver.write(fn)


async def _bundle(tx: Tx, name: str, version: int) -> BundleRecord:
    row = await tx.fetchrow(f"SELECT {BundleRecord.COLUMNS} FROM bundles "
                            "WHERE name=$1 AND version=$2", name, version)
    if row is None:
        raise NotFound(f"bundle {name[:64]!r} version {version} is not published; see "
                       "'tether bundle list'")
    return BundleRecord.from_row(row)
