"""SidecarConfig: read once per process into a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    state_dir: Path = Path(".tether/node")
    controller_url: str | None = None  # override node.json (e.g. a fault proxy in tests)
    attach_timeout_s: float = 5.0  # a runtime must send local.attach within this
    status_host: str = "127.0.0.1"  # loopback only
    status_port: int = 0  # 0: ephemeral; the URL is written to sidecar.status.url
    # Overrides of node.json's transport settings:
    proxy: str | None = None  # http://host:port CONNECT proxy (else HTTPS_PROXY/NO_PROXY)
    ca_file: str | None = None
    pins: tuple[str, ...] = ()

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "sidecar.sock"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "sidecar.pid"

    @property
    def status_path(self) -> Path:
        return self.state_dir / "sidecar.status.json"
