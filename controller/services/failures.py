"""How a periodic loop (the sweeper, the job driver) logs a failed round.

Rule: the store being unreachable (``StoreError`` ``unavailable``: PostgreSQL down or failing
over) is logged once per outage, as one warning without a traceback, since every round
fails the same way until it is back; any other failure is a bug and is logged with its
traceback each time. The loop carries on either way.
"""

from __future__ import annotations

import logging

from tether.protocol.errors import StoreError


class RoundFailures:
    """Call :meth:`failed` with what a round raised, :meth:`succeeded` after a good one."""

    def __init__(self, logger: logging.Logger, *, failed: str, store_down: str) -> None:
        self._logger = logger
        self._failed = failed
        self._store_down_message = store_down
        self._store_down = False  # the last round found the store unavailable (logged)

    def failed(self, exc: Exception) -> None:
        outage = isinstance(exc, StoreError) and exc.code == "unavailable"
        if not outage:
            self._logger.error(self._failed, exc_info=exc)
        elif not self._store_down:
            assert isinstance(exc, StoreError)
            self._logger.warning(self._store_down_message, extra={"detail": exc.message})
        self._store_down = outage

    def succeeded(self) -> None:
        self._store_down = False
