"""NodeConfig: read once per process into a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tether.protocol.iostream import LEASE_S

# Class A uplink frames in flight before an ack: enough to keep the controller's group
# commit busy (1,024 x 100 B frames is ~30 ms of flow at the benchmarked rate).
EVT_WINDOW = 1024


@dataclass(frozen=True, slots=True)
class NodeConfig:
    state_dir: Path = Path(".tether/node")
    durability: str = "fsync"
    evt_window: int = EVT_WINDOW  # unacked class A uplink frames in flight
    max_log_chunks: int = 1024  # class C buffer, oldest dropped beyond it
    max_concurrent: int = 16  # commands running at once
    drain_timeout_s: float = 5.0  # on stop: how long running commands may finish
    kill_grace_s: float = 5.0  # cancel: SIGTERM, then SIGKILL after this
    flush_timeout_s: float = 3.0  # on stop: how long to wait for the outbox to be acked
    controller_url: str | None = None  # override node.json (e.g. a fault proxy in tests)
    status_host: str = "127.0.0.1"  # loopback only
    status_port: int = 0  # 0: ephemeral; the URL is written to runtime.status.url
    max_outbox: int = 100_000  # past it, new class A work is refused (queue_class_a)
    policy_path: Path | None = None  # default: <state-dir>/policy.json if it exists
    # The media plane (node/rtc, docs/operations.md "ICE settings"): host candidates only
    # from these addresses (empty: aioice's choice, which never offers 127.0.0.1), STUN and
    # TURN servers, what the video transceiver sends, and the most peers at once.
    rtc_host_addresses: tuple[str, ...] = ()
    rtc_stun: tuple[str, ...] = ()
    rtc_turn: tuple[str, ...] = ()
    rtc_turn_username: str | None = None
    rtc_turn_credential: str | None = None
    rtc_video: str = "pattern"  # pattern | loopback | a file or device for MediaPlayer
    max_rtc_peers: int = 16
    # file.send: how long ICE may take to connect before the relay takes over
    rtc_ice_timeout_s: float = 10.0
    workspace_path: Path | None = None  # default: <state-dir>/workspace (the file channel's)
    # an io stream (shell, exec --stdin) that heard nothing of the operator's side this
    # long is hung up; over the controller's keepalive period (10 s) by design
    io_lease_s: float = LEASE_S
    # started by `tether node supervise` (node/supervisor.py): a restart exits for the
    # supervisor to start the active slot, and runtime bundles can be installed
    supervised: bool = False

    @property
    def db_path(self) -> Path:
        return self.state_dir / "node.db"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "runtime.pid"

    @property
    def status_path(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def effective_policy_path(self) -> Path:
        return self.policy_path or self.state_dir / "policy.json"

    @property
    def workspace_dir(self) -> Path:
        return self.workspace_path or self.state_dir / "workspace"

    @property
    def apps_path(self) -> Path:
        return self.state_dir / "apps.json"

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "sidecar.sock"

    @property
    def sidecar_pid_path(self) -> Path:
        return self.state_dir / "sidecar.pid"
