"""Operator roles and who is calling (pure: no I/O).

Roles are ordered: ``viewer`` < ``operator`` < ``admin``; each may do what the ones below
it may. ``viewer`` reads (REST GETs, ``/ws`` subscriptions); ``operator`` also runs commands,
jobs and shells; ``admin`` also manages operator tokens and join tokens, reads the audit
log, and disables, enables or deletes nodes (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")  # in order: each includes the ones before it
_RANK = {role: rank for rank, role in enumerate(ROLES)}


def role_at_least(role: str, at_least: str) -> bool:
    """True when ``role`` may do what ``at_least`` may. An unknown ``role`` (a stored row
    from a newer version, say) may do nothing; an unknown ``at_least`` is a bug."""
    return _RANK.get(role, -1) >= _RANK[at_least]


@dataclass(frozen=True, slots=True)
class Caller:
    """The operator token a request was made with (never the secret itself)."""

    token_id: str
    name: str | None
    role: str

    @property
    def actor(self) -> str:
        """How the audit log names this caller: the token's name and id."""
        return f"{self.name} ({self.token_id})" if self.name else self.token_id
