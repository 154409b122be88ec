"""The bundle download: ``GET /api/v1/bundles/{name}/{version}/file``, authenticated as the
node (protocol/node_http.py), into a temporary file, resumed with ``Range`` after a break
(docs/protocol.md "The node's bundle plane").

Rules:
1. The file never grows past the offer's ``size``: a controller that sends more is a
   ``size_mismatch`` (the part file is dropped), never a full disk.
2. A break (connection lost, a timeout, a 5xx) is retried with jittered exponential
   backoff, at most :data:`MAX_TRIES` requests in all; every network wait has a timeout.
   A retry asks for ``Range: bytes=<have>-``: 206 appends (its ``Content-Range`` must
   start at ``have``), 200 restarts from zero, 416 starts over from zero once.
3. The finished file's size and sha256 must equal the offer's (``size_mismatch`` /
   ``sha256_mismatch``, the part file dropped); it is fsynced before it is used.
4. Other answers (401, 403, 404, ...) end the download at once (``download_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.common.tlspin import pinned_context
from tether.protocol.backoff import backoff_delays
from tether.protocol.node_http import node_authorization
from tether.protocol.update import UpdateOffer

MAX_TRIES = 8
CHUNK = 1 << 16
TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=10.0, pool=10.0)
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class DownloadFailed(Exception):
    """The download ended without a whole, matching file: ``code`` is ``download_failed``
    (nothing usable arrived), ``size_mismatch`` or ``sha256_mismatch`` (the controller
    sent other bytes than the offer names)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Source:
    """Where and how the node downloads: the controller's http(s) base URL, the node's
    identity, and the TLS trust and proxy enrollment used (node.json ``transport``)."""

    base_url: str
    node_id: str
    key: Ed25519PrivateKey
    transport: dict[str, Any]

    def client(self) -> httpx.AsyncClient:
        pins = self.transport.get("pins") or ()
        ca_file = self.transport.get("ca_file")
        verify: Any = pinned_context(ca_file=ca_file, pins=pins) if ca_file or pins else True
        return httpx.AsyncClient(verify=verify, proxy=self.transport.get("proxy"),
                                 timeout=TIMEOUT, follow_redirects=False)


def source_url(config_url: str | None, identity_url: str) -> str:
    """The http(s) base the download uses: the config's ``controller_url`` override when it
    is an http(s) URL (a fault proxy in tests), else node.json's."""
    if config_url and config_url.lower().startswith(("http://", "https://")):
        return config_url.rstrip("/")
    url = identity_url.rstrip("/")
    if url.startswith("wss://"):
        url = "https://" + url[len("wss://"):]
    elif url.startswith("ws://"):
        url = "http://" + url[len("ws://"):]
    return url.removesuffix("/v1/edge/connect")


Progress = Callable[[int, int], Awaitable[None]]  # (bytes so far, resumed_from)


async def download(source: Source, offer: UpdateOffer, part: Path, *,
                   progress: Progress, rng: random.Random | None = None,
                   max_tries: int = MAX_TRIES) -> Path:
    """Download the offer's file into ``part`` (resuming what it holds) and return it
    whole and checked (Rules 1-4); raises :class:`DownloadFailed`. ``progress`` is told
    at the start and at each resume, not per chunk."""
    path = f"/api/v1/bundles/{offer.name}/{offer.version}/file"
    delays = backoff_delays((rng or random.Random()).uniform, base_s=0.2, cap_s=5.0)
    restarted_on_416 = False
    last_error = "no attempt made"
    part.parent.mkdir(parents=True, exist_ok=True)
    async with source.client() as client:
        for attempt in range(max_tries):
            have = _size(part)
            if have > offer.size:
                _drop(part)
                have = 0
            if have == offer.size:
                break
            if attempt:
                await asyncio.sleep(next(delays))
            await progress(have, have)
            headers = {"Authorization": node_authorization(
                source.key, source.node_id, "GET", path, int(time.time() * 1000))}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                status = await _fetch(client, source.base_url + path, headers, part, have,
                                      offer.size)
            except (httpx.HTTPError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            if status == 416:
                if restarted_on_416:
                    raise DownloadFailed("download_failed", "the controller refused the "
                                         "range twice (416)")
                restarted_on_416 = True
                _drop(part)
                last_error = "416"
                continue
            if status in RETRY_STATUS:
                last_error = f"HTTP {status}"
                continue
            if status not in (200, 206):
                raise DownloadFailed("download_failed", f"the controller answered HTTP "
                                     f"{status} for {path}")
        else:
            raise DownloadFailed("download_failed", f"gave up after {max_tries} tries; "
                                 f"last: {last_error}")
    return await asyncio.to_thread(_finish, part, offer)


async def _fetch(client: httpx.AsyncClient, url: str, headers: dict[str, str], part: Path,
                 have: int, size: int) -> int:
    """One request; appends what arrives (Rule 1) and returns the HTTP status. Raises
    httpx errors for a break (what arrived so far is kept) and DownloadFailed for a body
    that runs past ``size``."""
    async with client.stream("GET", url, headers=headers) as resp:
        if resp.status_code == 200:
            have = 0  # the whole file again: start over
        elif resp.status_code == 206:
            if not resp.headers.get("content-range", "").startswith(f"bytes {have}-"):
                have = 0  # not the range asked for: trust nothing of it, start over
                _drop(part)
                return 503
        else:
            return resp.status_code
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o600)
        over = False
        try:
            os.ftruncate(fd, have)
            os.lseek(fd, have, os.SEEK_SET)
            async for chunk in resp.aiter_bytes(CHUNK):
                if have + len(chunk) > size:
                    over = True
                    break
                os.write(fd, chunk)
                have += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        if over:
            _drop(part)  # nothing of another file is kept to resume from
            raise DownloadFailed("size_mismatch", f"the controller sent more than the "
                                 f"offer's {size} bytes")
        if have < size:
            raise httpx.ReadError(f"the body ended after {have} of {size} bytes")
        return resp.status_code


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _drop(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _finish(part: Path, offer: UpdateOffer) -> Path:
    size = part.stat().st_size
    if size != offer.size:
        part.unlink(missing_ok=True)
        raise DownloadFailed("size_mismatch", f"the file is {size} bytes, the offer says "
                             f"{offer.size}")
    with part.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != offer.sha256:
        part.unlink(missing_ok=True)
        raise DownloadFailed("sha256_mismatch", f"the file has sha256 {digest[:16]}..., the "
                             f"offer says {offer.sha256[:16]}...")
    return part
