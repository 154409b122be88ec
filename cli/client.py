"""The operator's HTTP client: finds the controller and the token the way the CLI promises
(--url/TETHER_URL, --token/TETHER_TOKEN, else the local controller's data dir)."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tether.common.tlspin import pinned_context

DEFAULT_DATA_DIR = Path(".tether/controller")
DEFAULT_URL = "http://127.0.0.1:8700"


class CliError(Exception):
    """One line for stderr; ``exit_code`` 1 for failures, 2 for usage. ``code`` is the
    machine-readable code of ``--json`` errors: the controller's own for an API error, else
    ``usage_error`` (exit 2) or ``cli_error``."""

    def __init__(self, message: str, exit_code: int = 1, *, code: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code or ("usage_error" if exit_code == 2 else "cli_error")


def resolve_url(flag: str | None, data_dir: Path = DEFAULT_DATA_DIR,
                context: dict[str, Any] | None = None) -> str:
    """--url, else TETHER_URL, else the current context's, else the local controller's."""
    url = flag or os.environ.get("TETHER_URL") or (context or {}).get("url")
    if url:
        return str(url).rstrip("/")
    url_file = data_dir / "controller.url"
    if url_file.exists():
        return url_file.read_text().strip().rstrip("/")
    return DEFAULT_URL


def resolve_token(flag: str | None, data_dir: Path = DEFAULT_DATA_DIR,
                  context: dict[str, Any] | None = None) -> str:
    """--token, else TETHER_TOKEN, else the current context's, else the local admin's."""
    token = flag or os.environ.get("TETHER_TOKEN")
    if token:
        return token.strip()
    if context:
        from .context import context_token

        token = context_token(context)
        if token:
            return token
    token_file = data_dir / "admin.token"
    if token_file.exists():
        return token_file.read_text().strip()
    raise CliError("no operator token: pass --token, set TETHER_TOKEN, add a context "
                   "('tether context set'), or run on the controller's machine (reads "
                   f"{token_file})", 2, code="unauthorized")


@dataclass
class Api:
    """The REST API of one controller. Over ``https://`` it trusts ``ca_file`` (else the
    system store) and, with ``pins``, only a certificate whose SHA-256 matches one, checked
    inside the handshake before the token is written (:mod:`tether.common.tlspin`)."""

    url: str
    token: str
    timeout_s: float = 15.0
    ca_file: str | None = None
    pins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ca_file or self.pins:  # a pin means nothing over plain http (the node's rule)
            from tether.node.identity import check_transport
            from tether.protocol.errors import TetherError

            try:
                check_transport(self.url, {"ca_file": self.ca_file, "pins": self.pins})
            except TetherError as exc:
                raise CliError(exc.message, 2) from None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx verifies the controller's certificate with."""
        if self.ca_file or self.pins:
            return pinned_context(ca_file=self.ca_file, pins=self.pins)
        return True

    @property
    def ws_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``websockets.connect(api.ws_url, ...)``: the same trust."""
        if self.ws_url.startswith("wss://") and (self.ca_file or self.pins):
            return {"ssl": pinned_context(ca_file=self.ca_file, pins=self.pins)}
        return {}

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=self.timeout_s, verify=self.verify,
                            headers={"Authorization": f"Bearer {self.token}"})

    def request(self, method: str, path: str, *, json: Any = None,
                headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None, content: Any = None) -> Any:
        try:
            with self._client() as client:
                resp = client.request(method, path, json=json, headers=headers, params=params,
                                      content=content)
        except httpx.ConnectError as exc:
            if isinstance(exc.__context__, ssl.SSLCertVerificationError) or "CERTIFICATE" in \
                    str(exc).upper() or "pin" in str(exc):
                raise CliError(f"the controller at {self.url} failed TLS verification ({exc}); "
                               "pass --ca-file with its CA, or --pin-sha256 with its "
                               "certificate's SHA-256", code="tls_error") from None
            raise CliError(f"cannot reach the controller at {self.url} ({exc}); is it running? "
                           "Start one with 'tether controller serve' or pass --url",
                           code="unreachable") from None
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the controller at {self.url} ({exc}); is it running? "
                           "Start one with 'tether controller serve' or pass --url",
                           code="unreachable") from None
        if resp.status_code >= 400:
            code = None
            try:
                err = resp.json()["error"]
                message = f"{err['message']} ({err['code']}, HTTP {resp.status_code})"
                code = str(err["code"])
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {resp.status_code} from {path}"
            raise CliError(message, code=code or f"http_{resp.status_code}")
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
