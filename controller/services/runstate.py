"""What this controller process is, now: its id, since when it runs, whether it is stopping,
and which HTTP protocol serves it. Set by the process's composer (app.py, server.py) and
read by the services it hands this to; holds no logic."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.common.http_deadlines import DeadlineH11Protocol


@dataclass(eq=False, slots=True)
class RunState:
    controller_id: str = ""  # known once the store is open
    started_at: float = field(default_factory=time.time)
    stopping: bool = False  # set first thing on shutdown: new edge sessions get 1001
    start_error: str | None = None  # why the start failed (app.StartError), for server.py
    # the HTTP protocol class serving this controller (server.py), for its counters
    http_protocol: type[DeadlineH11Protocol] | None = None

    def is_stopping(self) -> bool:
        return self.stopping

    def get_controller_id(self) -> str:
        return self.controller_id

    def http_counters(self) -> dict[str, int]:
        """The HTTP protocol's deadline counters (zeros when the app is served some other
        way, as in tests that mount it directly)."""
        http = self.http_protocol
        if http is None:
            return {"header_timeouts_total": 0, "body_timeouts_total": 0,
                    "pending_headers_evicted_total": 0}
        return {"header_timeouts_total": http.header_timeouts_total,
                "body_timeouts_total": http.body_timeouts_total,
                "pending_headers_evicted_total": http.pending_headers_evicted_total}
