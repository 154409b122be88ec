"""The ``control`` data channel: JSON requests ``{"id", "kind", "args"}``, each answered by
``{"re": id, "state", ...}`` (docs/protocol.md "Media plane (node side)").

Rules:

1. A request is one text message of at most :data:`MAX_REQUEST_BYTES` bytes holding a
   JSON object with ``id`` (a string of 1-64 chars or an integer), ``kind`` (a string)
   and ``args`` (an object, optional). Anything else is answered ``{"re": <id or null>,
   "state": "failed", "error": {"code": "bad_frame", ...}}`` and the channel stays open.
2. At most :data:`MAX_IN_FLIGHT` requests run at once per channel; one more is answered
   ``failed`` / ``rate_limited`` at once (the sender waits for answers: its backpressure).
3. Kinds run through :class:`CommandDispatcher`, the node's own policy and executors (the
   same ``Policy.check`` and the same ``ExecRunner`` the WebSocket path uses): a kind the
   policy refuses is answered ``rejected`` with the rule, as a ``cmd.status`` would be.
4. Every answer fits one SCTP message (aiortc caps them at 64 KiB): exec output is cut to
   :data:`MAX_EXEC_OUTPUT` bytes per stream, and says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from ..executors.exec import ExecRunner
from ..logbuf import LogBuffer
from ..policy import Policy
from ..store import KNOWN_KINDS
from .subflow import Subflow

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 << 10
MAX_IN_FLIGHT = 8
MAX_EXEC_OUTPUT = 4 << 10  # per stream; JSON escaping may grow it 6x, still under 64 KiB
MAX_ID_CHARS = 64
MAX_KIND_CHARS = 64
EXEC_TIMEOUT_S = 60.0  # an exec over the channel with no timeout from it or the policy
# Kinds the control channel answers itself; any other known kind is the WebSocket path's.
CONTROL_CHANNEL_KINDS = ("diag.ping", "exec", "status", "app.status")

Reply = dict[str, Any]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


def _error(re: Any, code: str, message: str, state: str = "failed") -> Reply:
    return {"re": re, "state": state, "error": {"code": code, "message": message}}


class CommandDispatcher:
    """Runs one control-channel request with the node's policy and executors.

    ``status`` returns the node's status (the callable's answer). ``exec`` runs through
    :class:`ExecRunner` under the runtime's own concurrency slots; its output comes back
    in the answer (rule 4), not as ``log.chunk``: nothing of it is recorded as a command of
    the controller's."""

    def __init__(self, *, policy: Policy, exec_slots: asyncio.Semaphore | None = None,
                 kill_grace_s: float = 5.0,
                 status: Callable[[], Mapping[str, Any]] = dict,
                 apps_table: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.policy = policy
        self.exec_slots = exec_slots or asyncio.Semaphore(4)
        self.kill_grace_s = kill_grace_s
        self.status = status
        self.apps_table = apps_table

    async def run(self, request_id: Any, kind: str, args: Mapping[str, Any]) -> Reply:
        rule = self.policy.check(kind, args)
        if rule is not None:  # the operator's rule first, as the WebSocket path does
            return _error(request_id, "forbidden", f"rejected by policy: {rule}", "rejected")
        if kind not in KNOWN_KINDS and kind != "status":
            return _error(request_id, "invalid_request", f"unknown command kind {kind!r}",
                          "rejected")
        if kind not in CONTROL_CHANNEL_KINDS:
            return _error(request_id, "unsupported_type",
                          f"kind {kind!r} runs over the controller session, not the control "
                          "channel", "rejected")
        if kind == "diag.ping":
            now = int(time.time() * 1000)
            return {"re": request_id, "state": "succeeded",
                    "result": {"received_ms": now, "sent_ms": now}}
        if kind == "status":
            return {"re": request_id, "state": "succeeded", "result": dict(self.status())}
        if kind == "app.status":
            table = dict(self.apps_table()) if self.apps_table else {}
            return {"re": request_id, "state": "succeeded", "result": {"apps": table}}
        return await self._exec(request_id, args)

    async def _exec(self, request_id: Any, args: Mapping[str, Any]) -> Reply:
        logs = LogBuffer(max_chunks=64, max_bytes=4 * MAX_EXEC_OUTPUT)
        if args.get("timeout_s") is None and self.policy.default_timeout_s is None \
                and self.policy.max_timeout_s is None:
            args = {**args, "timeout_s": EXEC_TIMEOUT_S}  # never holds a slot for ever
        async with self.exec_slots:
            runner = ExecRunner(None, {**args, "stdin": False}, logs=logs,
                                on_output=lambda: None, kill_grace_s=self.kill_grace_s,
                                policy=self.policy, max_output_bytes=2 * MAX_EXEC_OUTPUT)
            outcome = await runner.run()
        out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        for chunk in logs.take():
            if chunk.source in out:
                out[chunk.source] += chunk.data
        result: dict[str, Any] = dict(outcome.result or {})
        for source, data in out.items():
            result[source] = bytes(data[:MAX_EXEC_OUTPUT]).decode("utf-8", "replace")
            if len(data) > MAX_EXEC_OUTPUT:
                result[f"{source}_truncated"] = True
        reply: Reply = {"re": request_id, "state": outcome.state,
                        "exit_code": outcome.exit_code, "result": result}
        if outcome.error:
            reply["error"] = {"code": "failed", "message": outcome.error}
        return reply


def parse_request(message: Any) -> tuple[Any, str, Mapping[str, Any]]:
    """(id, kind, args) of one message, or ValueError with the reason (rule 1); the
    ValueError's ``args[1]``, when present, is the id it could read."""
    if not isinstance(message, str):
        raise ValueError("control messages are JSON text, not binary")
    if len(message) > MAX_REQUEST_BYTES or len(message.encode("utf-8", "replace")) \
            > MAX_REQUEST_BYTES:
        raise ValueError(f"a control message is at most {MAX_REQUEST_BYTES} bytes")
    try:
        request = json.loads(message)
    except ValueError:
        raise ValueError("a control message must be a JSON object") from None
    if not isinstance(request, dict):
        raise ValueError("a control message must be a JSON object")
    request_id = request.get("id")
    if isinstance(request_id, bool) or not (
            (isinstance(request_id, str) and 0 < len(request_id) <= MAX_ID_CHARS)
            or (isinstance(request_id, int) and 0 <= request_id < 1 << 53)):
        raise ValueError("'id' must be a string of 1-64 characters or an integer")
    kind = request.get("kind")
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_CHARS:
        raise ValueError("'kind' must be a string of 1-64 characters", request_id)
    args = request.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError("'args' must be a JSON object", request_id)
    return request_id, kind, args


class ControlChannel:
    """Serves one ``control`` data channel (the node is the answering end). ``channel`` is
    an aiortc ``RTCDataChannel``; requests run in tasks ``spawn`` owns (the peer's)."""

    def __init__(self, channel: Any, dispatcher: CommandDispatcher, subflow: Subflow, *,
                 spawn: Spawn) -> None:
        self.channel = channel
        self.dispatcher = dispatcher
        self.subflow = subflow
        self._spawn = spawn
        self.in_flight = 0
        channel.on("message", self._on_message)

    def _send(self, reply: Reply) -> None:
        if self.channel.readyState != "open":
            return
        text = json.dumps(reply, separators=(",", ":"), default=str)
        self.channel.send(text)
        self.subflow.bytes_out += len(text.encode())

    def _on_message(self, message: Any) -> None:
        size = len(message) if isinstance(message, bytes | str) else 0
        self.subflow.bytes_in += size
        try:
            request_id, kind, args = parse_request(message)
        except ValueError as exc:
            self.subflow.errors_total += 1
            read_id = exc.args[1] if len(exc.args) > 1 else None
            self._send(_error(read_id, "bad_frame", str(exc.args[0])))
            return
        if self.in_flight >= MAX_IN_FLIGHT:
            self.subflow.errors_total += 1
            self._send(_error(request_id, "rate_limited",
                              f"at most {MAX_IN_FLIGHT} requests in flight; wait for answers"))
            return
        self.in_flight += 1
        self._spawn(self._run(request_id, kind, args))

    async def _run(self, request_id: Any, kind: str, args: Mapping[str, Any]) -> None:
        try:
            reply = await self.dispatcher.run(request_id, kind, args)
        except Exception as exc:  # a bug in one request must not take the peer down
            logger.exception("control request failed", extra={"kind": kind})
            reply = _error(request_id, "internal", f"the node failed to run it: {exc}"[:200])
        finally:
            self.in_flight -= 1
        self._send(reply)


ControlRunner = Callable[[Any, str, Mapping[str, Any]], Awaitable[Reply]]
