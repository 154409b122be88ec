"""common/tasks.py: an owner cancelled while it waits for a task to end stays cancelled."""

from __future__ import annotations

import asyncio

import pytest

from tether.common.tasks import cancel_and_wait


async def _slow_to_die(release: asyncio.Event, dying: asyncio.Event,
                       started: asyncio.Event) -> None:
    started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        dying.set()
        await release.wait()  # cleanup that takes a while, as closing a connection does
        raise


async def test_the_owner_cancelled_during_the_wait_is_cancelled_not_left_running() -> None:
    release, dying, started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    child = asyncio.ensure_future(_slow_to_die(release, dying, started))
    await started.wait()  # cancelled before its first step, it would never clean up
    after: list[str] = []

    async def owner() -> None:
        await cancel_and_wait(child)
        after.append("went on")  # what suppress(CancelledError) around `await child` did

    task = asyncio.ensure_future(owner())
    await dying.wait()
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after == [] and child.cancelled()


async def test_the_tasks_own_cancellation_ends_there_and_its_failure_is_raised() -> None:
    never = asyncio.ensure_future(asyncio.Event().wait())
    await cancel_and_wait(never)
    assert never.cancelled()
    await cancel_and_wait(None)

    started = asyncio.Event()

    async def fails_on_cancel() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup broke") from None

    failing = asyncio.ensure_future(fails_on_cancel())
    await started.wait()
    with pytest.raises(RuntimeError, match="cleanup broke"):
        await cancel_and_wait(failing)
