"""Ending a task its owner holds, without swallowing the owner's own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended.

    Invariants: the task's own cancellation stops here; a cancellation of the *caller*
    while it waits propagates. (``with suppress(CancelledError): await task`` cannot tell
    the two apart, so a caller cancelled during that wait went on running, and whoever
    cancelled it waited for it forever.) An exception the task ended with is raised, as
    ``await task`` would have.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.result()
