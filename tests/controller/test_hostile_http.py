"""Hostile HTTP against the controller (issue 11, item 4): bodies are bounded while they are
read, JSON is parsed strictly, query and path parameters never make a 500, and every
refusal is a 4xx with the one JSON error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil

from ..helpers import ControllerProc
from .conftest import Identity, assert_error

MIB = 1 << 20


async def _raw_request(port: int, head: bytes, body: bytes, *,
                       timeout_s: float = 5.0) -> bytes:
    """Send ``head`` and ``body`` and read the status line and headers of the answer while
    the request is still open (the rest of its body never sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.transport.abort()


def _chunked(data: bytes, size: int = 64 * 1024) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
                    for i in range(0, len(data), size))


async def test_a_chunked_body_is_refused_with_413_as_soon_as_it_passes_1_mib(
        controller: ControllerProc) -> None:
    # 2 MiB of an unending chunked upload to the unauthenticated enroll endpoint: the
    # answer comes at the limit, without waiting for the end of the body
    head = (b"POST /v1/edge/enroll HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    answer = await _raw_request(controller.port, head, _chunked(b" " * (2 * MIB)))
    assert answer.startswith(b"HTTP/1.1 413 "), answer


async def test_a_declared_content_length_over_the_limit_is_413_before_the_body(
        controller: ControllerProc) -> None:
    head = (b"POST /v1/edge/enroll HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5368709120\r\n\r\n")
    answer = await _raw_request(controller.port, head, b"{")
    assert answer.startswith(b"HTTP/1.1 413 "), answer


async def test_a_huge_chunked_upload_does_not_grow_the_controller(
        controller: ControllerProc, anon: httpx.AsyncClient) -> None:
    proc = psutil.Process(controller.pid)
    rss0 = proc.memory_info().rss

    async def gigantic() -> AsyncIterator[bytes]:
        block = b" " * MIB
        for _ in range(96):  # 96 MiB, no Content-Length
            yield block

    resp = await anon.post("/v1/edge/enroll", content=gigantic(), timeout=60)
    assert_error(resp, 413, "frame_too_large")
    grown_mib = (proc.memory_info().rss - rss0) / MIB
    assert grown_mib < 24, f"the controller grew by {grown_mib:.0f} MiB"


async def test_json_nested_100k_deep_is_400_on_every_json_endpoint(
        controller: ControllerProc, anon: httpx.AsyncClient, api: httpx.AsyncClient,
        enroll: Any) -> None:
    ident: Identity = await enroll()
    deep = b"[" * 100_000 + b"]" * 100_000
    deep_object = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    for raw in (deep, deep_object, b'{"labels": ' + deep + b"}"):
        for client, path in ((anon, "/v1/edge/enroll"), (api, "/api/v1/join-tokens"),
                             (api, f"/api/v1/nodes/{ident.node_id}/commands")):
            resp = await client.post(path, content=raw,
                                     headers={"Content-Type": "application/json"})
            assert_error(resp, 400, "invalid_request")


async def test_json_nested_deeper_than_32_is_400_even_when_python_could_parse_it(
        api: httpx.AsyncClient, enroll: Any) -> None:
    ident: Identity = await enroll()
    nested: Any = 1
    for _ in range(40):
        nested = [nested]
    resp = await api.post(f"/api/v1/nodes/{ident.node_id}/commands",
                          json={"kind": "custom", "args": {"x": nested}})
    assert_error(resp, 400, "invalid_request")


async def test_numbers_json_cannot_hold_are_400_not_stored(
        api: httpx.AsyncClient, enroll: Any) -> None:
    ident: Identity = await enroll()
    path = f"/api/v1/nodes/{ident.node_id}/commands"
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999",
                    b"18446744073709551616", b"-9223372036854775809", b"1" * 5000):
        raw = b'{"kind": "custom", "args": {"x": ' + literal + b"}}"
        resp = await api.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert_error(resp, 400, "invalid_request")
    # the edges of the signed 64-bit range are fine
    for literal in (b"9223372036854775807", b"-9223372036854775808", b"1e308"):
        raw = b'{"kind": "custom", "args": {"x": ' + literal + b"}}"
        resp = await api.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 202, resp.text
    listed = await api.get("/api/v1/commands", params={"node_id": ident.node_id})
    assert listed.status_code == 200 and len(listed.json()["items"]) == 3


async def test_text_that_is_not_unicode_is_400(api: httpx.AsyncClient, enroll: Any,
                                               anon: httpx.AsyncClient) -> None:
    ident: Identity = await enroll()
    raw = b'{"kind": "custom", "args": {"x": "\\ud800"}}'  # a lone surrogate
    resp = await api.post(f"/api/v1/nodes/{ident.node_id}/commands", content=raw,
                          headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_request")
    for raw in (b'{"labels": {"\\udfff": "x"}}', b"\xff\xfe\xfd", b'{"a": "\xc3"}'):
        resp = await anon.post("/v1/edge/enroll", content=raw,
                               headers={"Content-Type": "application/json"})
        assert_error(resp, 400, "invalid_request")


async def test_integer_query_parameters_take_ascii_digits_in_range_only(
        api: httpx.AsyncClient, enroll: Any) -> None:
    ident: Identity = await enroll()
    submitted = await api.post(f"/api/v1/nodes/{ident.node_id}/commands",
                               json={"kind": "custom"})
    command_id = submitted.json()["command_id"]
    paths = {
        "after": [f"/api/v1/nodes/{ident.node_id}/logs",
                  f"/api/v1/commands/{command_id}/logs"],
        "limit": ["/api/v1/commands", f"/api/v1/nodes/{ident.node_id}/events",
                  f"/api/v1/commands/{command_id}/logs"],
    }
    hostile = ["1" + "0" * 30, "9223372036854775808", "-1", "١٢", "²", "12.0", "1e3", "",
               " 1", "0x10", "+5", "1_000"]
    for name, targets in paths.items():
        for path in targets:
            for value in hostile:
                resp = await api.get(path, params={name: value})
                assert_error(resp, 400, "invalid_request")
            resp = await api.get(path, params={name: "10"})
            assert resp.status_code == 200, (path, resp.text)
    for path in paths["limit"]:
        assert_error(await api.get(path, params={"limit": "0"}), 400, "invalid_request")
        assert_error(await api.get(path, params={"limit": "10001"}), 400, "invalid_request")


ODD_IDS = ["x" * 8000, "%00", "a%00b", "%ED%A0%80", "%FF", "..", "%2e%2e", "a%20b", "%0a",
           "%E2%80%AE", "%F0%9F%92%A9", "-", "0" * 40]


async def test_odd_node_and_command_ids_in_the_path_are_4xx_never_500(
        controller: ControllerProc, api: httpx.AsyncClient) -> None:
    gets = ["/api/v1/nodes/{}", "/api/v1/nodes/{}/sessions", "/api/v1/nodes/{}/events",
            "/api/v1/nodes/{}/monitor", "/api/v1/nodes/{}/logs", "/api/v1/commands/{}",
            "/api/v1/commands/{}/logs"]
    posts = ["/api/v1/nodes/{}/disable", "/api/v1/nodes/{}/enable",
             "/api/v1/nodes/{}/commands", "/api/v1/commands/{}/cancel",
             "/api/v1/commands/{}/pause", "/api/v1/commands/{}/resume"]
    async with httpx.AsyncClient(base_url=controller.url, timeout=5, headers={
            "Authorization": f"Bearer {controller.token}"}) as client:
        for odd in ODD_IDS:
            for template in gets + posts:
                url = httpx.URL(controller.url + template.format(odd))
                method = "GET" if template in gets else "POST"
                kw: dict[str, Any] = {"json": {"kind": "custom"}} if method == "POST" else {}
                resp = await client.request(method, url, **kw)
                assert 400 <= resp.status_code < 500, (method, template, odd, resp.text)
                assert_error(resp, resp.status_code)


async def test_query_text_parameters_of_any_shape_are_never_500(
        api: httpx.AsyncClient, enroll: Any) -> None:
    ident: Identity = await enroll()
    for value in ("x" * 8000, "\x00", "\udcff".encode("utf-8", "surrogatepass").hex(),
                  "%ED%A0%80", "\u202e"):
        for path, name in ((f"/api/v1/nodes/{ident.node_id}/logs", "source"),
                           (f"/api/v1/nodes/{ident.node_id}/monitor", "topic"),
                           ("/api/v1/commands", "node_id"), ("/api/v1/commands", "state")):
            resp = await api.get(path, params={name: value})
            assert resp.status_code in (200, 400), (path, name, value, resp.text)
            if resp.status_code == 400:
                assert_error(resp, 400, "invalid_request")


async def test_a_malformed_request_line_gets_the_json_error_shape(
        controller: ControllerProc) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", controller.port)
    try:
        writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
        async with asyncio.timeout(5):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head, answer
    assert json.loads(body)["error"]["code"] == "invalid_request"
