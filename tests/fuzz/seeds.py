"""The seed corpus the atheris harnesses start from: one valid input per target and body
type, so libFuzzer mutates well-formed frames instead of discovering msgpack from nothing.

The files under ``tests/fuzz/corpus/`` are this module's output, committed; regenerate them
with ``python -m tests.fuzz.seeds`` after a body type is added (a type without a sample
here still gets a seed, with an empty body).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack

from tether.protocol.codec import encode_batch, encode_json, encode_msgpack
from tether.protocol.frames import Frame
from tether.protocol.local import encode_local

from .targets import BODY_CODECS, MODES, body_types

CORPUS = Path(__file__).resolve().parent / "corpus"

# One valid body per type (PROTOCOL.md §4-6), as a peer sends it over msgpack.
SAMPLES: dict[str, dict[str, Any]] = {
    "edge.challenge": {"nonce": b"n" * 32, "controller_id": "ctl", "protocols": [1],
                       "time_ms": 5},
    "edge.hello": {"node_id": "node-a", "protocol": 1, "sig": b"s" * 64, "epoch": 7,
                   "acks": {"cmd": 3}, "session_id": None,
                   "runtime": {"state": "attached", "version": "1"},
                   "sidecar": {"version": "1", "pid": 9}, "capabilities": ["exec"],
                   "labels": {"site": "a"}},
    "edge.welcome": {"session_id": "s-1", "resumed": True, "epoch": 9, "acks": {"evt": 2},
                     "heartbeat_s": 15, "stale_after_s": 60, "offline_after_s": 300,
                     "max_frame": 1024},
    "edge.heartbeat": {"uptime_s": 1.5, "runtime": {"state": "attached"},
                       "outbox": {"depth": 0, "oldest_age_s": 0}, "acks": {"cmd": 1},
                       "transport": {"rtt_ms": 1.25, "reconnects": 0}},
    "edge.heartbeat_ack": {"time_ms": 10, "acks": {"evt": 1}},
    "edge.ack": {"acks": {"evt": 42}},
    "edge.resume": {"acks": {"cmd": 4}},
    "edge.runtime": {"state": "restarting", "version": "2"},
    "edge.goodbye": {"reason": "shutdown"},
    "error": {"code": "unknown_type", "message": "what is this"},
    "cmd.deliver": {"command_id": "c-1", "kind": "exec", "args": {"argv": ["true"]},
                    "deadline_ms": None, "created_ms": 1},
    "cmd.status": {"command_id": "c-1", "state": "succeeded", "exit_code": 0, "error": "x",
                   "started_ms": 1, "finished_ms": 2, "result": {"rx_ms": 1}},
    "log.chunk": {"command_id": "c-1", "source": "stdout", "seq": 1, "data": b"out",
                  "dropped": 0},
    "node.event": {"kind": "boot", "data": {"why": "power", "load": [0.5, 1]}},
    "node.resources": {"cpu": {"percent": 12.5}, "memory": {"used": 1 << 30}},
    "monitor.packet": {"topic": "temp", "data": {"celsius": 21.5}, "seq": 3, "at_ms": 9,
                       "dropped": 0},
}


def sample_frames() -> list[Frame]:
    """One frame per body type (sequenced where the type travels on ``evt``)."""
    out = []
    for i, t in enumerate(body_types(), start=1):
        out.append(Frame(t=t, b=SAMPLES.get(t, {}), id=f"f-{i}", s="evt", q=i))
    return out


def codec_seeds() -> list[bytes]:
    frames = sample_frames()
    packed = [encode_msgpack(f) for f in frames]
    seeds = [bytes([MODES.index("msgpack")]) + p for p in packed]
    seeds.append(bytes([MODES.index("msgpack")]) + encode_batch(packed[:3]))
    for f in frames:
        text = encode_json(f).encode()
        seeds.append(bytes([MODES.index("json_bytes")]) + text)
        seeds.append(bytes([MODES.index("json_text")]) + text)
    # the local link: a split point byte first, then two length-prefixed frames
    seeds.append(bytes([MODES.index("local")]) + encode_local(frames[0]) + encode_local(
        frames[1]))
    # /ws frames (JSON, PROTOCOL.md §9)
    for obj in ({"t": "hello", "b": {"token": "x"}}, {"t": "subscribe", "id": "1",
                                                       "b": {"topics": ["nodes"]}}):
        seeds.append(bytes([MODES.index("json_text")]) + json.dumps(obj).encode())
    return seeds


def body_seeds() -> list[bytes]:
    seeds = []
    for i, t in enumerate(body_types()):
        body = SAMPLES.get(t, {})
        for c, codec in enumerate(BODY_CODECS):
            if codec == "msgpack":
                data = msgpack.packb(body, use_bin_type=True)
            else:
                data = json.dumps(body, default=lambda b: b.hex()).encode()
            seeds.append(bytes([(i << 1 | c) & 0xFF]) + data)
    return seeds


def enroll_seeds() -> list[bytes]:
    """Bodies for the REST harness (``targets_asgi.check_rest``); ``@TOKEN@`` stands for a
    valid join token the harness made, so mutations reach past the token check."""
    key = "A" * 43  # 32 bytes of base64url
    bodies = [
        {"join_token": "@TOKEN@", "node_id": "node-a", "public_key": key, "labels": {}},
        {"join_token": "@TOKEN@", "node_id": "n", "public_key": key,
         "labels": {"site": "a"}},
        {"join_token": "nope", "node_id": "x", "public_key": "!"},
        {"kind": "exec", "args": {"argv": ["true"], "timeout_s": 1}, "ttl_s": 5},
        {"uses": 2, "ttl_s": 60, "labels": {"a": "b"}},
    ]
    seeds = [bytes([i]) + json.dumps(b).encode() for i, b in enumerate(bodies)]
    seeds.append(bytes([1]) + json.dumps(bodies[0]).encode())  # chunked
    seeds += [bytes([5]) + b"after=0&source=app", bytes([6]) + b"limit=10",
              bytes([7]) + b"limit=5&state=queued&node_id=fuzz-node"]
    return seeds


def write(name: str, seeds: list[bytes]) -> None:
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)


def main() -> None:
    write("codec", codec_seeds())
    write("bodies", body_seeds())
    write("rest", enroll_seeds())


if __name__ == "__main__":
    main()
