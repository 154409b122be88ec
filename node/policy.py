"""Node-local policy guardrails: which command kinds and executables may run, and limits.

The policy file (``<state-dir>/policy.json`` or ``tether node run --policy FILE``) is read
once at start; a file that does not validate stops the runtime with a message naming the
field. :meth:`Policy.check` is pure: it returns the rule that refuses a command, or None.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tether.protocol.errors import TetherError
from tether.protocol.frames import CONTROL_KINDS


def _resolve(program: str) -> str | None:
    path = program if "/" in program else shutil.which(program)
    return os.path.realpath(path) if path else None


class PolicyError(TetherError):
    default_code = "invalid_request"


@dataclass(frozen=True, slots=True)
class Policy:
    allow_kinds: tuple[str, ...] | None = None  # None: every kind the node knows
    deny_kinds: tuple[str, ...] = ()
    exec_allow: tuple[str, ...] | None = None  # absolute paths or names on PATH; None: any
    max_concurrent: int | None = None
    default_timeout_s: float | None = None
    max_timeout_s: float | None = None
    max_output_bytes: int | None = None  # per command; past it output is dropped, counted
    source: str = field(default="default", compare=False)

    @classmethod
    def load(cls, path: Path | None) -> Policy:
        """The policy in ``path``; the permissive default when there is none."""
        if path is None or not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except ValueError as exc:
            raise PolicyError(f"policy file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "inline") -> Policy:
        if not isinstance(raw, dict):
            raise PolicyError(f"policy {source} must be a JSON object")
        known = {"allow_kinds", "deny_kinds", "exec_allow", "max_concurrent",
                 "default_timeout_s", "max_timeout_s", "max_output_bytes"}
        unknown = set(raw) - known
        if unknown:
            raise PolicyError(f"policy {source}: unknown field(s) {sorted(unknown)}; "
                              f"known: {sorted(known)}")

        def names(key: str) -> tuple[str, ...] | None:
            value = raw.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise PolicyError(f"policy {source}: {key!r} must be a list of strings")
            return tuple(value)

        def number(key: str, kind: type) -> Any:
            value = raw.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 \
                    or (kind is int and not isinstance(value, int)):
                raise PolicyError(f"policy {source}: {key!r} must be a positive "
                                  f"{'integer' if kind is int else 'number'}")
            return value

        policy = cls(allow_kinds=names("allow_kinds"), deny_kinds=names("deny_kinds") or (),
                     exec_allow=names("exec_allow"),
                     max_concurrent=number("max_concurrent", int),
                     default_timeout_s=number("default_timeout_s", float),
                     max_timeout_s=number("max_timeout_s", float),
                     max_output_bytes=number("max_output_bytes", int), source=source)
        if policy.default_timeout_s and policy.max_timeout_s and \
                policy.default_timeout_s > policy.max_timeout_s:
            raise PolicyError(f"policy {source}: default_timeout_s exceeds max_timeout_s")
        return policy

    def check(self, kind: str, args: Mapping[str, Any]) -> str | None:
        """The rule that refuses this command, or None. Control kinds (cancel, pause,
        resume) are never refused: stopping work must always be possible."""
        if kind in CONTROL_KINDS:
            return None
        if kind in self.deny_kinds:
            return f"kind {kind!r} is in deny_kinds"
        if self.allow_kinds is not None and kind not in self.allow_kinds:
            return f"kind {kind!r} is not in allow_kinds"
        if kind != "exec":
            return None
        argv = args.get("argv")
        program = argv[0] if isinstance(argv, list) and argv and isinstance(argv[0], str) \
            else None
        if self.exec_allow is not None and (program is None or not self._allowed(program)):
            return f"executable {program!r} is not in exec_allow"
        timeout = args.get("timeout_s")
        if self.max_timeout_s is not None and isinstance(timeout, int | float) \
                and timeout > self.max_timeout_s:
            return f"timeout_s {timeout} exceeds max_timeout_s {self.max_timeout_s:g}"
        return None

    def _allowed(self, program: str) -> bool:
        """Listed literally, or the same file as a listed entry once both are resolved
        (names through PATH, links followed): ``echo`` admits ``/usr/bin/echo``."""
        listed = self.exec_allow or ()
        if program in listed:
            return True
        mine = _resolve(program)
        return mine is not None and any(_resolve(entry) == mine for entry in listed)

    def effective_timeout(self, args: Mapping[str, Any]) -> float | None:
        timeout = args.get("timeout_s")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            return float(timeout)
        return self.default_timeout_s

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, ()) and k != "source"}
        out["source"] = self.source
        out["digest"] = hashlib.sha256(json.dumps(out, sort_keys=True, default=list)
                                       .encode()).hexdigest()[:12]
        return out
