"""Stream epochs as the store keeps them (pure).

Rule 1: every epoch is stored as a signed 64-bit integer (``BIGINT``, SQLite ``INTEGER``).
The controller's own epochs are drawn from ``1..MAX_EPOCH`` and are stored as they are; a
node's epoch is any unsigned 64-bit value on the wire (PROTOCOL.md §2) and is stored as the
signed integer with the same 64 bits (:func:`to_stored`), which keeps equality, the only
comparison made on it, and :func:`from_stored` gives it back.
Rule 2 (evt epoch at hello): an unknown epoch is recorded; a different one is a reset (the
node started a new stream: the applied cursor restarts at 0); the same one resumes at the
stored cursor.
"""

from __future__ import annotations

from dataclasses import dataclass

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def to_stored(epoch: int) -> int:
    """An unsigned 64-bit epoch as the signed 64-bit integer with the same bits."""
    if not 0 <= epoch < _U64:
        raise ValueError(f"epoch {epoch} is not an unsigned 64-bit integer")
    return epoch - _U64 if epoch > _I64_MAX else epoch


def from_stored(value: int) -> int:
    """The unsigned epoch that :func:`to_stored` stored as ``value``."""
    return value + _U64 if value < 0 else value


@dataclass(frozen=True, slots=True)
class EvtEpoch:
    """Rule 2's answer: ``applied`` is where the node's evt stream resumes; ``record``
    says the stored epoch must become the hello's (with the cursor at 0)."""

    reset: bool
    applied: int
    record: bool


def evt_epoch_at_hello(*, stored: int | None, hello: int, applied: int) -> EvtEpoch:
    """Rule 2, with ``stored`` as kept (signed) and ``hello`` as on the wire (unsigned)."""
    if stored is None:
        return EvtEpoch(reset=False, applied=0, record=True)
    if from_stored(stored) != hello:
        return EvtEpoch(reset=True, applied=0, record=True)
    return EvtEpoch(reset=False, applied=applied, record=False)
