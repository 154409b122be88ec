"""Text for an operator's terminal that came, at least in part, from a peer."""

from __future__ import annotations

import unicodedata


def terminal_safe(value: object) -> str:
    """``value`` as text for the operator's terminal. Much of what the CLI and the diag tools
    show came from a node or a controller (labels, versions, apps, command errors, close
    reasons), a peer: control and format characters (C0/C1 controls, ESC sequences, bidi
    overrides, zero-width marks) are shown escaped (``\\x1b``), never written raw, so a peer
    cannot clear, retitle or reorder the screen. Printable text, spaces included, is kept."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or unicodedata.category(ch) == "Zs"
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)
