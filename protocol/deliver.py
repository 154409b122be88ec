"""Commands on their way to a node: the value rules of a submitted command and the one
function that builds its ``cmd.deliver`` frame (PROTOCOL.md §6; docs/protocol.md §6
"Frame cap").

Pure: no I/O. Raises :class:`BadFrame` (HTTP 400 ``invalid_request`` at REST) for a value
that breaks a rule and :class:`CommandTooLarge` (HTTP 413 ``frame_too_large``) for a command
whose frame would not fit the node's frame cap.

Rule 1: ``args`` is a plain map (``protocol/values.py``: finite floats, signed 64-bit
integers, valid text, no bytes) within :data:`ARGS_LIMITS`; no container holds more entries
than a node's decoder takes (``MAX_CONTAINER_LEN``).
Rule 2: the frame checked at submit is the frame sent later: :func:`encode_deliver` builds
both, and at submit the sequence number is the largest there is (the frame can only shrink).
Why this matters: msgpack writes every float as 9 bytes where JSON may write ``0.12`` in 4,
so a 960 KB JSON args body once became a 1.8 MB frame that the node refused with 1009 at
every reconnect, and every later command stayed queued behind it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .classes import CMD_STREAM
from .codec import encode_msgpack
from .errors import BadFrame, LocalProtocolError, TetherError
from .fields import ARGS_LIMITS as FIELD_ARGS_LIMITS
from .fields import MAX_ID_LEN
from .frames import MAX_TERM_SIZE, CmdDeliver, valid_node_id
from .values import INT64_MAX, Limits, int_in, number_in, plain_map, plain_size, text, text_map

MAX_KIND_LEN = 64
# The node parses cmd.deliver args with fields.ARGS_LIMITS: here the same rules, with the
# byte bound checked apart so that args too large for the node are 413, not 400. A command
# accepted here is never one the node must skip.
ARGS_LIMITS = Limits(max_depth=FIELD_ARGS_LIMITS.max_depth,
                     max_entries=FIELD_ARGS_LIMITS.max_entries, max_bytes=1 << 22,
                     max_key_len=FIELD_ARGS_LIMITS.max_key_len)
MAX_ARGV = 4096  # exec argv items
MAX_ARG_LEN = 1 << 20  # one argv item or env value (the frame cap bounds them all together)
MAX_ENV = 1024  # exec env entries
MAX_PATH_LEN = 4096
MAX_TIMEOUT_S = 365 * 86400
# A kind no node knows: what replaces a stored frame that can never be sent (see
# :func:`refused_placeholder`); a node answers it with ``rejected`` and runs nothing.
REFUSED_KIND = "tether.refused"


class CommandTooLarge(TetherError):
    """The command's ``cmd.deliver`` frame is over the node's frame cap (HTTP 413)."""

    default_code = "frame_too_large"


def command_kind(value: object) -> str:
    return text(value, "kind", min_len=1, max_len=MAX_KIND_LEN)


def command_args(kind: str, value: object) -> dict[str, Any]:
    """Checked args for a command of ``kind`` (Rule 1, and the shape of the kinds the
    controller knows: ``exec``, the control kinds). Raises BadFrame naming the field, or
    CommandTooLarge (413) for args over the byte bound a node parses them with."""
    args = plain_map(value, "args", ARGS_LIMITS)
    if kind == "exec":
        _exec_args(args)
    elif kind == "shell":
        _shell_args(args)
    elif kind in ("cancel", "pause", "resume"):
        text(args.get("command_id"), "command_id", min_len=1, max_len=MAX_ID_LEN)
    elif kind == "file.send":
        file_send_args(args)
    size = plain_size(args)
    if size > FIELD_ARGS_LIMITS.max_bytes:
        raise CommandTooLarge(f"args are {size} bytes as JSON, over the "
                              f"{FIELD_ARGS_LIMITS.max_bytes}-byte limit a node takes")
    return args


def _no_nul(value: str, name: str) -> str:
    if "\x00" in value:
        raise BadFrame(f"field {name!r} must not contain a NUL character")
    return value


def _exec_args(args: Mapping[str, Any]) -> None:
    argv = args.get("argv")
    if not isinstance(argv, list) or not 1 <= len(argv) <= MAX_ARGV:
        raise BadFrame(f"exec needs 'argv', a list of 1 to {MAX_ARGV} strings")
    for item in argv:
        _no_nul(text(item, "argv", max_len=MAX_ARG_LEN), "argv")
    if args.get("env") is not None:
        env = text_map(args["env"], "env", max_entries=MAX_ENV, max_key_len=256,
                       max_value_len=MAX_ARG_LEN)
        for key, item in env.items():
            if not key or "=" in key:
                raise BadFrame("field 'env' has a name that is empty or contains '='")
            _no_nul(key, "env")
            _no_nul(item, "env")
    if args.get("cwd") is not None:
        _no_nul(text(args["cwd"], "cwd", min_len=1, max_len=MAX_PATH_LEN), "cwd")
    if args.get("timeout_s") is not None:
        number_in(args["timeout_s"], "timeout_s", 0.001, MAX_TIMEOUT_S)
    if args.get("stdin") is not None and not isinstance(args["stdin"], bool):
        raise BadFrame("field 'stdin' must be a boolean (true: the process reads io.input)")


_PEER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def file_send_args(args: Mapping[str, Any]) -> Mapping[str, Any]:
    """``file.send`` (``tether cp`` node to node): ``peer_session_id`` (the granted peer,
    ``[A-Za-z0-9_.:-]{1,64}``), ``to_node`` (a node id), ``src`` (a path, judged by the
    node's policy), ``dst`` (optional: the file name at ``to_node``; the node checks it
    as a filexfer name). Raises BadFrame naming the field; returns ``args``."""
    unknown = sorted(set(args) - {"peer_session_id", "to_node", "src", "dst"})
    if unknown:
        raise BadFrame(f"file.send takes peer_session_id, to_node, src, dst; not "
                       f"{unknown[0][:64]!r}")
    psid = args.get("peer_session_id")
    if not isinstance(psid, str) or not _PEER_ID.fullmatch(psid):
        raise BadFrame("field 'peer_session_id' must be 1-64 characters of [A-Za-z0-9_.:-]")
    to_node = args.get("to_node")
    if not isinstance(to_node, str) or not valid_node_id(to_node):
        raise BadFrame("field 'to_node' must be a node id")
    _no_nul(text(args.get("src"), "src", min_len=1, max_len=MAX_PATH_LEN), "src")
    if args.get("dst") is not None:
        _no_nul(text(args["dst"], "dst", min_len=1, max_len=255), "dst")
    return args


MAX_TERM_LEN = 64


def _shell_args(args: Mapping[str, Any]) -> None:
    """``shell``: exec's fields with argv optional (the node's login shell by default),
    plus the terminal: ``rows`` and ``cols`` (1 to MAX_TERM_SIZE) and ``term`` (TERM)."""
    _exec_args({"argv": ["-"], **{k: v for k, v in args.items() if v is not None}})
    for name in ("rows", "cols"):
        if args.get(name) is not None:
            int_in(args[name], name, 1, MAX_TERM_SIZE)
    if args.get("term") is not None:
        _no_nul(text(args["term"], "term", min_len=1, max_len=MAX_TERM_LEN), "term")


def encode_deliver(*, command_id: str, kind: str, args: Mapping[str, Any], created_ms: int,
                   deadline_ms: int | None, q: int = INT64_MAX, max_frame: int) -> bytes:
    """The msgpack bytes of the command's ``cmd.deliver`` frame at sequence ``q`` (the
    default, the largest, gives the bound to check at submit). Raises
    :class:`CommandTooLarge` when it is over ``max_frame`` and :class:`BadFrame` when a
    value cannot be encoded."""
    int_in(q, "q", 1, INT64_MAX)
    frame = CmdDeliver(command_id=command_id, kind=kind, args=args, created_ms=created_ms,
                       deadline_ms=deadline_ms).frame(s=CMD_STREAM, q=q, id=command_id)
    try:
        data = encode_msgpack(frame, max_frame_bytes=1 << 62)
    except LocalProtocolError as exc:
        raise BadFrame(exc.message) from None
    if len(data) > max_frame:
        raise CommandTooLarge(
            f"the command's cmd.deliver frame would be {len(data)} bytes, over the node's "
            f"{max_frame}-byte frame limit; send smaller args (numbers cost 9 bytes each "
            "on the wire), or ship large data as a file")
    return data


def refused_placeholder(*, command_id: str, q: int) -> bytes:
    """A small frame for sequence ``q`` that stands in for a stored frame too large to send
    (written by an older version): the stream keeps no gap, the node rejects it and runs
    nothing."""
    frame = CmdDeliver(command_id=command_id, kind=REFUSED_KIND, args={}, created_ms=0,
                       deadline_ms=0).frame(s=CMD_STREAM, q=q, id=command_id)
    return encode_msgpack(frame)
