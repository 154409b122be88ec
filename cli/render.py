"""Values as a person reads them on a terminal: never a Python repr.

Rule: whatever JSON a peer sent (a node's labels, a command's args, a report's nested
parts), :func:`human` gives one line of text with no ``None``, no ``{'`` and no ``[{``:
a missing value is ``-``, a boolean ``yes``/``no``, a list its items joined by ``, ``, an
object its ``key=value`` pairs (nested objects as ``key.sub=value``). Every line the CLI
prints from it still goes through :func:`tether.common.terminal.terminal_safe`.
"""

from __future__ import annotations

from typing import Any

from tether.common.terminal import terminal_safe

MISSING = "-"


def human(value: Any) -> str:
    """``value`` as one human line (module Rule), already terminal-safe."""
    return terminal_safe(_text(value))


def _text(value: Any, prefix: str = "") -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        parts = [_pair(f"{prefix}{k}", v) for k, v in value.items()]
        return ", ".join(parts) if parts else MISSING
    if isinstance(value, (list, tuple)):
        items = [_text(v) if not isinstance(v, dict) else f"({_text(v)})" for v in value]
        return ", ".join(items) if items else MISSING
    return str(value)


def _pair(key: str, value: Any) -> str:
    if isinstance(value, dict) and value:
        return ", ".join(_pair(f"{key}.{k}", v) for k, v in value.items())
    if isinstance(value, (list, tuple)) and value:
        return f"{key}=[{_text(value)}]"
    return f"{key}={_text(value)}"


def print_pairs(pairs: list[tuple[str, Any]], *, width: int = 13) -> None:
    """``key  value`` lines, each value through :func:`human`."""
    for key, value in pairs:
        print(f"{key:<{width}} {human(value)}")
