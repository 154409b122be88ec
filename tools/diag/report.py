"""A probe's report: timed steps, each ok or failed with what to check next; printed as a
table or JSON; the exit code names the first step that failed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tether.common.terminal import terminal_safe


class StepFailed(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass
class Step:
    name: str
    ok: bool = False
    ms: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    hint: str | None = None


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    exit_codes: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Time a step; a StepFailed inside records it and propagates."""
        step = Step(name)
        self.steps.append(step)
        start = time.perf_counter()
        try:
            yield step
            step.ok = True
        except StepFailed as exc:
            step.error, step.hint = exc.message, exc.hint
            raise
        finally:
            step.ms = round((time.perf_counter() - start) * 1000, 3)

    @property
    def exit_code(self) -> int:
        for step in self.steps:
            if not step.ok:
                return self.exit_codes.get(step.name, 1)
        return 0

    def as_json(self) -> str:
        return json.dumps({"ok": self.exit_code == 0, "exit_code": self.exit_code,
                           "steps": [vars(s) for s in self.steps]}, indent=2)

    def as_table(self) -> str:
        lines = []
        for s in self.steps:
            mark = "ok  " if s.ok else "FAIL"
            detail = ", ".join(f"{k}={v}" for k, v in s.detail.items())
            lines.append(f"{mark} {s.name:<12} {s.ms:>9.3f} ms  {detail}")
            if not s.ok:
                lines.append(f"     error: {s.error}")
                lines.append(f"     check: {s.hint}")
        return "\n".join(terminal_safe(line) for line in lines)  # errors quote the peer
