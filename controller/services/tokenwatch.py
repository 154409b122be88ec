"""An open operator socket lives no longer than its token.

``/ws`` (browser.py) and the shell and io sockets (api/io.py) authenticate once, when they
open, and may then stay open for days (a web terminal survives idle periods). Each runs
:func:`until_token_invalid` beside its work and closes with 4401 when it returns, so a
token revoked or expired ends every socket it opened within :data:`TOKEN_RECHECK_S`.

Rule 1 (cost): one store read per open socket per period, nothing per frame.
Rule 2 (only a definite answer closes): a store that cannot answer is no reason to cut
operators off; the token is judged again next period.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..domain.roles import Caller

TOKEN_RECHECK_S = 30.0  # read at each period, so tests may shorten it


class TokenStore(Protocol):
    async def operator_caller(self, token: str) -> tuple[Caller | None, str]: ...


async def until_token_invalid(store: TokenStore, token: str) -> str:
    """Return why ``token`` is no longer valid (revoked, expired, unknown) once the store
    says so, checking every :data:`TOKEN_RECHECK_S`; never returns while it stays valid.
    Cancel it when the socket ends."""
    while True:
        await asyncio.sleep(TOKEN_RECHECK_S)
        try:
            caller, why = await store.operator_caller(token)
        except Exception:  # Rule 2: the store is unreachable; judge again next period
            continue
        if caller is None:
            return why
