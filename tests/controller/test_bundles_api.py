"""Bundles through the REST API of a real controller process: publish (and again, and a
conflict, and a version that does not go up, and over the size limit, and a tar of
another layout), roles and tokens, the download whole and by ranges, and a node
downloading as itself, with hostile node headers refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tether.protocol.node_http import node_authorization
from tether.protocol.signing import generate_private_key

from ..helpers import FAST, ControllerProc
from .bundlefiles import make_bundle, members, tar_of
from .conftest import NET_TIMEOUT_S, Identity, assert_error, eventually

MAX_BUNDLE = 4 << 20
# random, so gzip keeps its size: the file spans two 1 MiB chunks of the store
BIG = make_bundle("big", 1, payload=os.urandom(1536 << 10))
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProc]:
    ctl = ControllerProc(tmp_path / "controller",
                         extra=[*FAST, "--max-bundle-bytes", str(MAX_BUNDLE)])
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.terminate()


@pytest.fixture
def publish(api: httpx.AsyncClient) -> Callable[[bytes], Awaitable[httpx.Response]]:
    async def post(raw: bytes) -> httpx.Response:
        return await api.post("/api/v1/bundles", content=raw, headers=OCTETS)
    return post


@pytest.fixture
async def role_client(controller: ControllerProc, api: httpx.AsyncClient
                      ) -> AsyncIterator[Callable[[str], Awaitable[httpx.AsyncClient]]]:
    made: list[httpx.AsyncClient] = []

    async def make(role: str) -> httpx.AsyncClient:
        resp = await api.post("/api/v1/tokens", json={"role": role, "name": f"t-{role}"})
        assert resp.status_code == 201, resp.text
        client = httpx.AsyncClient(base_url=controller.url, timeout=NET_TIMEOUT_S, headers={
            "Authorization": f"Bearer {resp.json()['token']}"})
        client.token_id = resp.json()["token_id"]  # type: ignore[attr-defined]
        made.append(client)
        return client
    try:
        yield make
    finally:
        for client in made:
            await client.aclose()


def file_url(name: str, version: int) -> str:
    return f"/api/v1/bundles/{name}/{version}/file"


async def test_a_published_bundle_is_answered_listed_shown_and_downloaded_whole(
        api: httpx.AsyncClient, publish: Callable[[bytes], Awaitable[httpx.Response]]
        ) -> None:
    raw = make_bundle("web", 3)
    resp = await publish(raw)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"name": "web", "version": 3,
                           "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    listed = (await api.get("/api/v1/bundles")).json()
    assert [(b["name"], b["version"]) for b in listed["items"]] == [("web", 3)]
    shown = (await api.get("/api/v1/bundles/web/3")).json()
    assert shown["manifest"]["name"] == "web" and shown["kind"] == "app"
    assert shown["publisher"] and len(shown["key_ids"]) == 1
    got = await api.get(file_url("web", 3))
    assert got.status_code == 200 and got.content == raw
    assert got.headers["accept-ranges"] == "bytes"
    assert got.headers["etag"] == f'"{hashlib.sha256(raw).hexdigest()}"'
    assert_error(await api.get(file_url("web", 4)), 404, "not_found")
    assert_error(await api.get(file_url("Web", 3)), 400, "invalid_request")
    assert_error(await api.get(file_url("web", 0)), 400, "invalid_request")


async def test_the_same_file_again_is_200_and_another_is_409(
        publish: Callable[[bytes], Awaitable[httpx.Response]]) -> None:
    raw = make_bundle("web", 1)
    assert (await publish(raw)).status_code == 201
    again = await publish(raw)
    assert again.status_code == 200 and again.json()["sha256"] == hashlib.sha256(
        raw).hexdigest()
    assert_error(await publish(make_bundle("web", 1)), 409, "conflict")  # a fresh key
    assert (await publish(make_bundle("web", 2))).status_code == 201
    err = assert_error(await publish(make_bundle("web", 1, payload=b"x")), 409, "conflict")
    assert "never changes" in err["message"]


async def test_a_version_below_the_highest_published_is_409(
        publish: Callable[[bytes], Awaitable[httpx.Response]]) -> None:
    assert (await publish(make_bundle("web", 5))).status_code == 201
    err = assert_error(await publish(make_bundle("web", 4)), 409, "conflict")
    assert "not greater" in err["message"]


async def test_a_bundle_over_the_limit_is_413_and_nothing_is_stored(
        api: httpx.AsyncClient, publish: Callable[[bytes], Awaitable[httpx.Response]]
        ) -> None:
    huge = make_bundle("huge", 1, payload=os.urandom(MAX_BUNDLE))
    assert_error(await publish(huge), 413, "frame_too_large")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: cut while streaming
        for at in range(0, len(huge), 256 << 10):
            yield huge[at:at + (256 << 10)]
    assert_error(await api.post("/api/v1/bundles", content=chunked(), headers=OCTETS),
                 413, "frame_too_large")
    assert (await api.get("/api/v1/bundles")).json()["items"] == []
    assert_error(await api.get("/api/v1/bundles/huge/1"), 404, "not_found")


@pytest.mark.parametrize("bad", [
    b"", b"not a tar at all",
    tar_of(members(make_bundle())[:2]),
    tar_of([*members(make_bundle()), ("evil.sh", b"rm -rf /")]),
    tar_of([("../manifest.json", members(make_bundle())[0][1]),
            *members(make_bundle())[1:]]),
])
async def test_a_file_that_is_not_a_bundle_is_400(
        api: httpx.AsyncClient, publish: Callable[[bytes], Awaitable[httpx.Response]],
        bad: bytes) -> None:
    assert_error(await publish(bad), 400, "invalid_request")
    assert (await api.get("/api/v1/bundles")).json()["items"] == []


async def test_a_json_body_is_400_naming_the_right_content_type(
        api: httpx.AsyncClient) -> None:
    err = assert_error(await api.post("/api/v1/bundles", json={"name": "web"}), 400)
    assert "octet-stream" in err["message"]


async def test_a_viewer_lists_but_cannot_publish_or_download_and_a_revoked_token_is_401(
        api: httpx.AsyncClient, anon: httpx.AsyncClient,
        role_client: Callable[[str], Awaitable[httpx.AsyncClient]],
        publish: Callable[[bytes], Awaitable[httpx.Response]]) -> None:
    assert (await publish(make_bundle("web", 1))).status_code == 201
    viewer = await role_client("viewer")
    assert (await viewer.get("/api/v1/bundles")).status_code == 200
    assert (await viewer.get("/api/v1/bundles/web/1")).status_code == 200
    assert_error(await viewer.post("/api/v1/bundles", content=make_bundle("web", 2),
                                   headers=OCTETS), 403, "forbidden")
    assert_error(await viewer.get(file_url("web", 1)), 403, "forbidden")
    operator = await role_client("operator")
    assert (await operator.post("/api/v1/bundles", content=make_bundle("web", 2),
                                headers=OCTETS)).status_code == 201
    gone = await api.delete(f"/api/v1/tokens/{operator.token_id}")  # type: ignore[attr-defined]
    assert gone.status_code == 200, gone.text
    assert_error(await operator.get(file_url("web", 1)), 401, "unauthorized")
    assert_error(await operator.post("/api/v1/bundles", content=make_bundle("web", 3),
                                     headers=OCTETS), 401, "unauthorized")
    assert_error(await anon.get(file_url("web", 1)), 401, "unauthorized")
    audit = (await api.get("/api/v1/audit")).json()["items"]
    assert any(a["action"] == "POST /api/v1/bundles" and a["status"] == 403 for a in audit)
    assert any(a["action"] == "bundle.publish" and a["target"] == "web/2" for a in audit)


async def test_a_client_that_leaves_mid_upload_stores_nothing_and_the_next_publish_works(
        controller: ControllerProc, api: httpx.AsyncClient,
        publish: Callable[[bytes], Awaitable[httpx.Response]]) -> None:
    raw = make_bundle("web", 1)
    for _ in range(3):  # more than the publishes a replica runs at once (2)
        _, writer = await asyncio.open_connection("127.0.0.1", controller.port)
        writer.write(f"POST /api/v1/bundles HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {controller.token}\r\n"
                     f"Content-Type: application/octet-stream\r\n"
                     f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw[:len(raw) // 2])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def published() -> bool:  # 429 while the server has not yet seen them leave
        resp = await publish(raw)
        assert resp.status_code in (201, 429), resp.text
        return resp.status_code == 201
    await eventually(published, what="a publish once the cut uploads were let go")
    items = (await api.get("/api/v1/bundles")).json()["items"]
    assert [(b["name"], b["version"], b["size"]) for b in items] == [("web", 1, len(raw))]


async def test_ranges_give_the_first_bytes_the_middle_a_suffix_and_416_past_the_end(
        api: httpx.AsyncClient, publish: Callable[[bytes], Awaitable[httpx.Response]]
        ) -> None:
    assert (await publish(BIG)).status_code == 201
    size, url = len(BIG), file_url("big", 1)
    cases = {"bytes=0-99": (0, 99),
             # across the 1 MiB chunk boundary
             f"bytes={(1 << 20) - 10}-{(1 << 20) + 9}": ((1 << 20) - 10, (1 << 20) + 9),
             "bytes=-1000": (size - 1000, size - 1),
             f"bytes={size - 5}-": (size - 5, size - 1),
             f"bytes=10-{size + 100}": (10, size - 1)}
    for header, (first, last) in cases.items():
        got = await api.get(url, headers={"Range": header})
        assert got.status_code == 206, (header, got.status_code)
        assert got.content == BIG[first:last + 1], header
        assert got.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert int(got.headers["content-length"]) == last - first + 1
    for header in (f"bytes={size}-", "bytes=5-2", "bytes=0-1,4-5", "lines=1-2"):
        got = await api.get(url, headers={"Range": header})
        assert_error(got, 416, "range_not_satisfiable")
        assert got.headers["content-range"] == f"bytes */{size}"
    whole = await api.get(url)
    assert whole.status_code == 200 and whole.content == BIG
    head = await api.head(url, headers={"Range": "bytes=0-9"})
    assert head.status_code == 206 and head.content == b""
    assert head.headers["content-range"] == f"bytes 0-9/{size}"


async def test_a_node_downloads_as_itself_with_a_range(
        api: httpx.AsyncClient, anon: httpx.AsyncClient,
        enroll: Callable[..., Awaitable[Identity]],
        publish: Callable[[bytes], Awaitable[httpx.Response]]) -> None:
    assert (await publish(BIG)).status_code == 201
    node = await enroll("edge-1")
    url = file_url("big", 1)
    header = node_authorization(node.key, node.node_id, "GET", url, int(time.time() * 1000))
    got = await anon.get(url, headers={"Authorization": header, "Range": "bytes=100-"})
    assert got.status_code == 206 and got.content == BIG[100:]


async def test_hostile_node_headers_are_refused(
        api: httpx.AsyncClient, anon: httpx.AsyncClient,
        enroll: Callable[..., Awaitable[Identity]],
        publish: Callable[[bytes], Awaitable[httpx.Response]]) -> None:
    assert (await publish(make_bundle("web", 1))).status_code == 201
    node = await enroll("edge-2")
    url = file_url("web", 1)
    now = int(time.time() * 1000)

    async def with_header(value: str) -> httpx.Response:
        return await anon.get(url, headers={"Authorization": value})

    good = node_authorization(node.key, node.node_id, "GET", url, now)
    bad_b64 = good.rsplit(":", 1)[0] + ":" + "!" * 86 + "=="
    assert_error(await with_header(bad_b64), 401, "auth_failed")
    assert_error(await with_header("Tether-Node edge-2"), 401, "auth_failed")
    wrong_key = node_authorization(generate_private_key(), node.node_id, "GET", url, now)
    assert_error(await with_header(wrong_key), 401, "auth_failed")
    stale = node_authorization(node.key, node.node_id, "GET", url, now - 120_000)
    assert_error(await with_header(stale), 401, "auth_failed")
    other_path = node_authorization(node.key, node.node_id, "GET", file_url("web", 2), now)
    assert_error(await with_header(other_path), 401, "auth_failed")
    unknown = node_authorization(node.key, "nobody", "GET", url, now)
    assert_error(await with_header(unknown), 401, "auth_failed")
    sig = base64.b64decode(good.rsplit(":", 1)[1])
    flipped = good.rsplit(":", 1)[0] + ":" + base64.b64encode(
        bytes([sig[0] ^ 1]) + sig[1:]).decode()
    assert_error(await with_header(flipped), 401, "auth_failed")
    # a node's signature opens only the download, never the operator API
    listed = node_authorization(node.key, node.node_id, "GET", "/api/v1/bundles", now)
    assert_error(await anon.get("/api/v1/bundles", headers={"Authorization": listed}), 401)
    assert (await with_header(good)).status_code == 200
    assert (await api.post(f"/api/v1/nodes/{node.node_id}/disable")).status_code == 200
    fresh = node_authorization(node.key, node.node_id, "GET", url, int(time.time() * 1000))
    assert_error(await with_header(fresh), 403, "node_disabled")
