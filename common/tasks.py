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


def live_tasks() -> int | None:
    """How many tasks of the running event loop have not finished (``asyncio.all_tasks()``),
    the figure a task leak grows; None when called outside a running loop.

    Call it from the loop's own thread (a status handler, a metrics collector run by one):
    ``all_tasks`` reads the running loop's set, so from another thread it sees nothing.
    """
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop
        return None
