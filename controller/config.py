"""ControllerConfig: read once per process (CLI flags, then TETHER_* environment, then
defaults) into a frozen dataclass; library code takes it, never os.environ."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tether.protocol.codec import MAX_FRAME_BYTES
from tether.protocol.liveness import Thresholds

from .store.quotas import StoreQuotas


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    data_dir: Path = Path(".tether/controller")
    # The cluster (docs/operations.md): a ``postgresql://`` URL shared by the replicas, or
    # None for the SQLite file in ``data_dir`` (zero setup, one controller); a ``nats://``
    # URL (comma-separated for several servers) routing between replicas, or None for the
    # in-process router and bus; this replica's id (None: the one kept in ``data_dir``).
    store_url: str | None = None
    bus_url: str | None = None
    replica_id: str | None = None
    host: str = "127.0.0.1"
    port: int = 8700
    durability: str = "fsync"
    thresholds: Thresholds = field(default_factory=Thresholds)
    handshake_timeout_s: float = 10.0  # challenge to hello, when few connections wait
    # Unauthenticated connections (services/admission.py HelloGate, common/http_deadlines.py)
    min_hello_timeout_s: float = 3.0  # the hello deadline never tightens below this
    hello_pressure_at: int = 2048  # connections waiting for a hello before it tightens
    max_prehello: int = 8192  # waiting for a hello in all; past it, the oldest is closed
    max_prehello_per_address: int = 4096  # from one remote address; ditto, per address
    header_timeout_s: float = 10.0  # the whole HTTP request header, else 408 and close
    body_timeout_s: float = 30.0  # the whole HTTP request body once its header is in
    max_pending_headers: int = 16384  # awaiting a header; past it the oldest gets 408
    max_concurrent_handshakes: int = 512  # handshakes running at once
    max_waiting_handshakes: int = 8192  # past both limits, new edge connections get 4429
    listen_backlog: int = 8192  # the kernel caps it at net.core.somaxconn
    max_handshake_wait_s: float = 8.0  # waited this long: 4429 (nodes wait 10 s for welcome)
    max_frame_bytes: int = MAX_FRAME_BYTES
    # Byte budgets for what peers make the controller keep (overflow policies: see
    # store/quotas.py and services/monitor.py; the table is in docs/operations.md).
    max_log_bytes_per_command: int = 16 << 20  # first bytes kept, the rest counted
    max_log_bytes_per_node: int = 64 << 20  # all of a node's logs: oldest pruned, counted
    max_node_log_bytes_per_node: int = 8 << 20  # logs not tied to a command (apps, runtime)
    max_node_events_per_node: int = 10_000  # node.event rows kept: oldest pruned, counted
    max_node_event_bytes_per_node: int = 4 << 20  # and their bytes
    max_node_event_bytes: int = 64 << 10  # one node.event over this is refused
    max_monitor_bytes_per_node: int = 4 << 20  # monitor packets in memory: oldest dropped
    max_monitor_bytes_total: int = 256 << 20  # and for all nodes together
    max_dead_letters_per_node: int = 1000  # poison frames kept with their reason: oldest go
    # The audit log's retention, applied hourly by the leader's sweeper (0: no bound of
    # that kind): records older than this many days, and all but the newest this many.
    audit_max_age_days: float = 400.0
    max_audit_records: int = 1_000_000
    max_pending_evt_frames: int = 4096  # per session, then reading pauses
    max_pending_evt_bytes: int = 8 << 20  # and their bytes on the wire: then reading pauses
    cmd_window: int = 256  # unacked downlink frames in flight per session
    tls_cert: Path | None = None
    tls_key: Path | None = None
    sweep_interval_s: float = 1.0
    # How often live sessions' last-seen times are written (the API reads live sessions
    # from memory; this only bounds how stale the stored time is after a controller crash).
    # Each node's row is written at most once per interval: 10,000 nodes cost 333 rows/s.
    touch_interval_s: float = 30.0
    downlink_check_s: float = 5.0  # bounds how long a lost nudge delays a queued command
    log_format: str = "text"
    allowed_origins: tuple[str, ...] = ()
    ws_max_queue: int = 1024  # events queued per /ws client before it is cut off (4429)
    ws_max_queue_bytes: int = 16 << 20  # and bytes
    # GET /metrics: open to whoever reaches the port (scrapers), or only with a valid
    # operator token of any role (docs/security.md)
    metrics_require_token: bool = False
    # The dashboard's media page (api/rtc.py GET /api/v1/rtc/config): STUN/TURN URLs for
    # the browser's RTCPeerConnection (none: host candidates only), the TURN username and
    # credential (given to every operator's browser: use short-lived TURN credentials)
    rtc_ice_servers: tuple[str, ...] = ()
    rtc_host_addresses: tuple[str, ...] = ()  # the page trickles only these host candidates
    rtc_ice_username: str | None = None
    rtc_ice_credential: str | None = None
    # Bundles (services/bundles.py, docs/operations.md "Bundles"): one file at most this
    # big (a publish over it is 413, nothing stored), all of them together at most this
    # (0: no quota); stored in the database in chunks of bundle_chunk_bytes
    max_bundle_bytes: int = 256 << 20
    max_bundle_bytes_total: int = 8 << 30
    bundle_chunk_bytes: int = 1 << 20

    @property
    def store_quotas(self) -> StoreQuotas:
        return StoreQuotas(node_event_max_bytes=self.max_node_event_bytes,
                           node_events_bytes_per_node=self.max_node_event_bytes_per_node,
                           node_events_per_node=self.max_node_events_per_node,
                           log_bytes_per_command=self.max_log_bytes_per_command,
                           log_bytes_per_node=self.max_log_bytes_per_node,
                           node_log_bytes_per_node=self.max_node_log_bytes_per_node)

    @property
    def audit_max_age_s(self) -> float | None:
        return self.audit_max_age_days * 86400 if self.audit_max_age_days > 0 else None

    @property
    def audit_max_records(self) -> int | None:
        return self.max_audit_records if self.max_audit_records > 0 else None

    @property
    def node_touch_interval_s(self) -> float:
        """How often the sweeper writes its sessions' last-seen times: ``touch_interval_s``,
        but at most half of ``stale_after_s``. The other replicas judge the nodes this one
        holds from those times (services/nodes.py), so a node touched less often than it
        goes stale would show ``stale`` on every other replica while it is connected."""
        return min(self.touch_interval_s, self.thresholds.stale_after_s / 2)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "controller.db"

    @property
    def store(self) -> str | Path:
        """What :func:`~tether.controller.store.factory.make_driver` opens."""
        return self.store_url if self.store_url else self.db_path

    @property
    def replica_id_path(self) -> Path:
        return self.data_dir / "replica.id"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"
