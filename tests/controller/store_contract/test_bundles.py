"""Store contract: bundles (store/bundles.py), on every backend: a publish stores the
file's chunks and its row; the same file again is idempotent; a published version never
changes and versions only go up; the total quota holds; an upload that does not publish
leaves nothing; listing pages newest first."""

from __future__ import annotations

import hashlib

import pytest

from tether.controller.store.bundles import NewBundle, QuotaExceeded
from tether.controller.store.controller_store import ControllerStore
from tether.protocol.errors import Conflict, NotFound

CHUNK = 4


def new(name: str = "web", version: int = 1, data: bytes = b"0123456789") -> NewBundle:
    return NewBundle(name=name, version=version, kind="app",
                     sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                     manifest=b'{"name":"%s"}' % name.encode(), signatures=b"[]",
                     key_ids=("0123456789abcdef",))


async def publish(store: ControllerStore, bundle: NewBundle, data: bytes, *,
                  blob: str | None = None, quota: int | None = None):  # type: ignore[no-untyped-def]
    blob_id = blob or f"blob-{bundle.name}-{bundle.version}-{bundle.sha256[:8]}"
    for idx in range(0, len(data), CHUNK):
        await store.put_bundle_chunk(blob_id, idx // CHUNK, data[idx:idx + CHUNK])
    return await store.add_bundle(bundle, blob_id=blob_id, chunk_bytes=CHUNK, actor="admin",
                                  max_total_bytes=quota)


async def read_all(store: ControllerStore, name: str, version: int) -> bytes:
    record = await store.get_bundle(name, version)
    return b"".join([await store.bundle_chunk(record.blob_id, i)
                     for i in range(record.chunks)])


async def chunk_rows(store: ControllerStore) -> int:
    async def fn(tx):  # type: ignore[no-untyped-def]
        return int(await tx.fetchval("SELECT count(*) FROM bundle_chunks"))
    return await store.driver.read(fn)  # type: ignore[no-any-return]


async def test_a_published_bundle_is_read_back_whole_with_its_metadata(
        store: ControllerStore) -> None:
    data = b"0123456789"
    record, created = await publish(store, new(), data)
    assert created and (record.name, record.version, record.size) == ("web", 1, 10)
    assert record.chunks == 3 and record.key_ids == ("0123456789abcdef",)
    assert record.manifest == b'{"name":"web"}' and record.publisher == "admin"
    assert await read_all(store, "web", 1) == data
    with pytest.raises(NotFound):
        await store.get_bundle("web", 2)


async def test_the_same_file_again_is_idempotent_and_leaves_no_second_copy(
        store: ControllerStore) -> None:
    first, _ = await publish(store, new(), b"0123456789")
    again, created = await publish(store, new(), b"0123456789", blob="blob-second")
    assert not created and again == first
    assert await chunk_rows(store) == 3
    assert await store.check_bundle(new(), max_total_bytes=None) == first


async def test_another_file_under_a_published_version_is_a_conflict(
        store: ControllerStore) -> None:
    await publish(store, new(), b"0123456789")
    other = new(data=b"abcdefghij")
    with pytest.raises(Conflict, match="never changes"):
        await store.check_bundle(other, max_total_bytes=None)
    with pytest.raises(Conflict):
        await publish(store, other, b"abcdefghij", blob="blob-other")
    assert await read_all(store, "web", 1) == b"0123456789"


async def test_a_version_not_above_every_earlier_one_is_a_conflict(
        store: ControllerStore) -> None:
    await publish(store, new(version=5, data=b"five"), b"five")
    with pytest.raises(Conflict, match="not greater"):
        await publish(store, new(version=3, data=b"three"), b"three")
    record, created = await publish(store, new(version=6, data=b"six"), b"six")
    assert created and record.version == 6
    # another name has versions of its own
    assert (await publish(store, new("api", 1, b"x"), b"x"))[1]


async def test_the_total_quota_refuses_what_would_pass_it(store: ControllerStore) -> None:
    await publish(store, new(version=1), b"0123456789", quota=15)
    with pytest.raises(QuotaExceeded):
        await store.check_bundle(new(version=2, data=b"abcdefghij"), max_total_bytes=15)
    with pytest.raises(QuotaExceeded):
        await publish(store, new(version=2, data=b"abcdefghij"), b"abcdefghij", quota=15)
    assert await store.bundle_bytes_total() == 10


async def test_an_upload_that_misses_chunks_does_not_publish(store: ControllerStore) -> None:
    bundle = new()
    await store.put_bundle_chunk("blob-short", 0, b"0123")
    with pytest.raises(Conflict, match="publish again"):
        await store.add_bundle(bundle, blob_id="blob-short", chunk_bytes=CHUNK, actor="a")
    assert await store.drop_bundle_upload("blob-short") == 1
    assert await chunk_rows(store) == 0
    with pytest.raises(NotFound):
        await store.get_bundle("web", 1)


async def test_unfinished_uploads_are_pruned_and_published_chunks_are_kept(
        store: ControllerStore) -> None:
    await publish(store, new(), b"0123456789")
    await store.put_bundle_chunk("blob-dead", 0, b"zz")
    assert await store.prune_bundle_uploads(older_than_s=3600) == 0  # too young
    assert await store.prune_bundle_uploads(older_than_s=-1) == 1
    assert await store.drop_bundle_upload((await store.get_bundle("web", 1)).blob_id) == 0
    assert await read_all(store, "web", 1) == b"0123456789"


async def test_bundles_are_listed_newest_first_by_name_and_in_pages(
        store: ControllerStore) -> None:
    for version in (1, 2, 3):
        await publish(store, new(version=version, data=b"v%d" % version), b"v%d" % version)
    await publish(store, new("api", 1, b"a"), b"a")
    everything = await store.list_bundles(name=None, before=None, limit=10)
    assert [(b.name, b.version) for b in everything] == [
        ("api", 1), ("web", 3), ("web", 2), ("web", 1)]
    page = await store.list_bundles(name="web", before=None, limit=2)
    assert [b.version for b in page] == [3, 2]
    rest = await store.list_bundles(name="web", before=page[-1].seq, limit=2)
    assert [b.version for b in rest] == [1]


async def test_a_big_chunk_is_stored_and_read_back_byte_for_byte(
        store: ControllerStore) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    bundle = new("big", 1, data)
    await store.put_bundle_chunk("blob-big", 0, data)
    record, _ = await store.add_bundle(bundle, blob_id="blob-big", chunk_bytes=len(data),
                                       actor="admin")
    assert await store.bundle_chunk(record.blob_id, 0) == data
