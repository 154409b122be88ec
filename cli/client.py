"""The operator's HTTP client: finds the controller and the token the way the CLI promises
(--url/TETHER_URL, --token/TETHER_TOKEN, else the local controller's data dir)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_DATA_DIR = Path(".tether/controller")
DEFAULT_URL = "http://127.0.0.1:8700"


class CliError(Exception):
    """One line for stderr; ``exit_code`` 1 for failures, 2 for usage."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resolve_url(flag: str | None, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    url = flag or os.environ.get("TETHER_URL")
    if url:
        return url.rstrip("/")
    url_file = data_dir / "controller.url"
    if url_file.exists():
        return url_file.read_text().strip().rstrip("/")
    return DEFAULT_URL


def resolve_token(flag: str | None, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    token = flag or os.environ.get("TETHER_TOKEN")
    if token:
        return token.strip()
    token_file = data_dir / "admin.token"
    if token_file.exists():
        return token_file.read_text().strip()
    raise CliError("no operator token: pass --token, set TETHER_TOKEN, or run on the "
                   f"controller's machine (reads {token_file})", 2)


@dataclass
class Api:
    url: str
    token: str
    timeout_s: float = 15.0

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=self.timeout_s,
                            headers={"Authorization": f"Bearer {self.token}"})

    def request(self, method: str, path: str, *, json: Any = None,
                headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None) -> Any:
        try:
            with self._client() as client:
                resp = client.request(method, path, json=json, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the controller at {self.url} ({exc}); is it running? "
                           "Start one with 'tether controller serve' or pass --url") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                message = f"{err['message']} ({err['code']}, HTTP {resp.status_code})"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {resp.status_code} from {path}"
            raise CliError(message)
        return resp.json()

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    @property
    def ws_url(self) -> str:
        base = self.url
        if base.startswith("https://"):
            return "wss://" + base[len("https://"):] + "/ws"
        return "ws://" + base.removeprefix("http://") + "/ws"
