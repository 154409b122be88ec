"""``tether-app.toml``: how a node runs a bundle's app (issue 15; docs/protocol.md
"Bundles"). Pure: it takes the file's bytes.

```toml
argv = ["bin/server", "--port", "8080"]   # relative paths resolve inside the bundle
restart = "on-failure"                     # always | on-failure | never (default on-failure)
[env]
LOG_LEVEL = "info"
[health]                                   # optional
argv = ["bin/check"]
interval_s = 10                            # default 10
[policy]                                   # optional: what the manifest's policy adds
kinds = ["exec"]
executables = ["/usr/bin/curl"]
limits = { max_memory_bytes = 268435456 }
```

Rule: parsed once, strictly: unknown keys are refused, every list and string is bounded, and
a file that breaks a rule is a :class:`~.bundle.BundleError` ``bad_app`` naming the key.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .bundle import BundleError, Policy, parse_policy

MAX_APP_TOML_BYTES = 64 << 10
MAX_ARGV = 256
MAX_ARG_CHARS = 4096
MAX_ENV = 256
MAX_ENV_VALUE_CHARS = 32 << 10
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 3600.0
DEFAULT_INTERVAL_S = 10.0
RESTART_POLICIES = ("always", "on-failure", "never")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_NO_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class HealthSpec:
    argv: tuple[str, ...]
    interval_s: float = DEFAULT_INTERVAL_S


@dataclass(frozen=True, slots=True)
class AppSpec:
    """A parsed ``tether-app.toml``; ``policy`` is its optional ``[policy]`` table (empty when
    absent)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    restart: str = "on-failure"
    health: HealthSpec | None = None
    policy: Policy = _NO_POLICY


def _bad(message: str) -> BundleError:
    return BundleError("bad_app", f"tether-app.toml: {message}")


def _argv(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_ARGV:
        raise _bad(f"{what} is a list of 1..{MAX_ARGV} strings")
    for arg in value:
        if not isinstance(arg, str) or len(arg) > MAX_ARG_CHARS or "\x00" in arg:
            raise _bad(f"each of {what} is a string of at most {MAX_ARG_CHARS} characters, "
                       "without NUL")
    if not value[0]:
        raise _bad(f"{what}[0] (the program) is empty")
    return tuple(value)


def _env(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_ENV:
        raise _bad(f"env is a table of at most {MAX_ENV} variables")
    for key, val in value.items():
        if not _ENV_NAME.fullmatch(key):
            raise _bad(f"env name {key!r} must match {_ENV_NAME.pattern}")
        if (not isinstance(val, str) or len(val) > MAX_ENV_VALUE_CHARS or "\x00" in val
                or any(unicodedata.category(c) == "Cs" for c in val)):
            raise _bad(f"env.{key} is a string of at most {MAX_ENV_VALUE_CHARS} characters")
    return MappingProxyType(dict(value))


def _health(value: object) -> HealthSpec:
    if not isinstance(value, dict) or not set(value) <= {"argv", "interval_s"}:
        raise _bad("[health] has argv and interval_s only")
    interval = value.get("interval_s", DEFAULT_INTERVAL_S)
    if (type(interval) not in (int, float)
            or not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S):
        raise _bad(f"health.interval_s is a number in {MIN_INTERVAL_S}..{MAX_INTERVAL_S}")
    return HealthSpec(_argv(value.get("argv"), "health.argv"), float(interval))


def parse_app_toml(raw: bytes) -> AppSpec:
    """The app spec in ``raw`` (at most :data:`MAX_APP_TOML_BYTES` of UTF-8 TOML). Keys:
    ``argv`` (required), ``env``, ``restart``, ``[health]``, ``[policy]``; anything else is
    refused. Raises :class:`BundleError` ``bad_app``."""
    if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_APP_TOML_BYTES:
        raise _bad(f"the file is at most {MAX_APP_TOML_BYTES} bytes")
    try:
        doc: dict[str, Any] = tomllib.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise _bad(f"not UTF-8 TOML ({str(exc)[:120]})") from None
    unknown = set(doc) - {"argv", "env", "restart", "health", "policy"}
    if unknown:
        raise _bad(f"unknown keys {sorted(unknown)} (allowed: argv, env, restart, health, "
                   "policy)")
    if "argv" not in doc:
        raise _bad("argv is required")
    restart = doc.get("restart", "on-failure")
    if restart not in RESTART_POLICIES:
        raise _bad(f"restart must be one of {', '.join(RESTART_POLICIES)}")
    try:
        policy = parse_policy(doc.get("policy", {}))
    except BundleError as exc:
        raise _bad(exc.message) from None
    return AppSpec(argv=_argv(doc["argv"], "argv"), env=_env(doc.get("env", {})),
                   restart=restart,
                   health=_health(doc["health"]) if "health" in doc else None, policy=policy)
