"""Controller composition: the services built from one :class:`ControllerConfig`, the
Starlette app that exposes them (edge gateway, /ws, REST API, /metrics) and the lifespan that
starts and stops them, in that order. Nothing here holds logic: each service takes only the
collaborators it uses (controller/services/), and this module is the one place that knows
them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from tether.common import __version__
from tether.common.tasks import cancel_and_wait
from tether.protocol.errors import StoreError

from .api import admin as admin_api
from .api import bundles as api_bundles
from .api import io as io_api
from .api import jobs as api_jobs
from .api import metrics as api_metrics
from .api import openapi as api_openapi
from .api import rollouts as api_rollouts
from .api import routes as api
from .api import rtc as api_rtc
from .api.auth import AuditMiddleware
from .browser import BrowserServices, browser_endpoint
from .config import ControllerConfig
from .gateway import EdgeGateway, EdgeServices, edge_endpoint, edge_session
from .services.admin_token import ensure_admin_token
from .services.admission import Admission, HelloGate
from .services.bundles import BundleService
from .services.bus import EventBus, LocalBus
from .services.commands import CommandService
from .services.jobs import JobDriver, JobService
from .services.leader import Leadership
from .services.liveness import NodeLiveness
from .services.metrics import CommandLatency, EdgeCounters, nodes_by_liveness
from .services.monitor import MonitorStore
from .services.nats_bus import NatsBus
from .services.nats_link import NatsLink, NatsUnavailable
from .services.nats_metrics import nats_samples
from .services.nats_router import NatsRouter
from .services.nodes import NodeViews
from .services.peek import LocalPeek, Peeks, RemotePeek
from .services.probe import CachedStoreFigures, DriverProbe
from .services.registry import SessionRegistry
from .services.replica import redact_url, stable_replica_id
from .services.rollouts import RolloutDriver, RolloutService
from .services.router import LocalRouter, Router
from .services.rtc import RtcCounters, RtcService
from .services.runstate import RunState
from .services.sweeper import Sweeper
from .store.controller_store import ControllerStore
from .store.factory import is_postgres, leader_lock, make_driver
from .store.sql import SqlDriver
from .web import routes as dashboard_routes

logger = logging.getLogger(__name__)

EDGE_PATH = "/v1/edge/connect"


class StartError(Exception):
    """The controller cannot start: its store or its NATS cannot be reached. The message is
    one line for the operator (no traceback; server.py exits non-zero with it)."""


@dataclass(frozen=True, slots=True, eq=False)
class Cluster:
    """The NATS services of a replica (``--bus``): started link, bus, router; closed in
    reverse."""

    link: NatsLink
    bus: NatsBus
    router: NatsRouter


@dataclass(frozen=True, slots=True, eq=False)
class Controller:
    """Every service of one controller process, wired (see :func:`build`)."""

    config: ControllerConfig
    run: RunState
    replica_id: str
    driver: SqlDriver
    store: ControllerStore
    registry: SessionRegistry
    router: Router
    bus: EventBus
    cluster: Cluster | None  # None: one controller, the in-process router and bus
    monitor: MonitorStore
    peeks: Peeks  # a node's live session and monitor packets, from whichever replica holds it
    admission: Admission
    liveness: NodeLiveness
    nodes: NodeViews
    commands: CommandService
    gateway: EdgeGateway
    leadership: Leadership
    sweeper: Sweeper
    jobs: JobService
    job_driver: JobDriver  # runs while leader (services/jobs.py)
    metrics: CollectorRegistry  # this process's own, never the global one (services/metrics.py)
    rtc: RtcService  # the media plane's signalling relay (services/rtc.py)
    bundles: BundleService  # published bundles, in the store (services/bundles.py)
    rollouts: RolloutService  # rollouts of bundles (services/rollouts.py)
    rollout_driver: RolloutDriver  # the rollout engine, runs while leader

    @property
    def shared_store(self) -> bool:
        """True when other replicas may use the store (PostgreSQL); a SQLite file is held
        by one process (its lock file)."""
        return is_postgres(self.config.store)


def build(config: ControllerConfig) -> Controller:
    """Construct and wire the services; nothing is opened or started (see :func:`start`).
    The store is ``config.store`` (SQLite file or PostgreSQL URL); with ``config.bus_url``,
    routing and events go over NATS (services/nats_*.py), else they stay in-process."""
    run = RunState()
    replica_id = config.replica_id or stable_replica_id(config.replica_id_path)
    driver = make_driver(config.store, durability=config.durability)
    metrics = CollectorRegistry()
    store = ControllerStore(driver, quotas=config.store_quotas,
                            max_dead_letters_per_node=config.max_dead_letters_per_node,
                            command_latency=CommandLatency(metrics))
    registry = SessionRegistry()
    monitor = MonitorStore(max_bytes_per_node=config.max_monitor_bytes_per_node,
                           max_bytes_total=config.max_monitor_bytes_total)
    local_peek = LocalPeek(registry, monitor, replica_id)
    cluster: Cluster | None = None
    router: Router
    bus: EventBus
    remote_peek: RemotePeek | None = None  # one controller: nothing is held elsewhere
    if config.bus_url:
        servers = config.bus_url.split(",")
        link = NatsLink(servers if len(servers) > 1 else servers[0], replica_id=replica_id)
        cluster = Cluster(link=link, bus=NatsBus(link),
                          router=NatsRouter(registry, link,
                                            max_frame_bytes=config.max_frame_bytes,
                                            peek=local_peek))
        router, bus, remote_peek = cluster.router, cluster.bus, cluster.router.peek
    else:
        router, bus = LocalRouter(registry, local_peek), LocalBus()
    peeks = Peeks(registry, monitor, remote_peek)
    admission = Admission(slots=config.max_concurrent_handshakes,
                          max_waiting=config.max_waiting_handshakes,
                          max_wait_s=config.max_handshake_wait_s,
                          hello=HelloGate(timeout_s=config.handshake_timeout_s,
                                          min_timeout_s=config.min_hello_timeout_s,
                                          pressure_at=config.hello_pressure_at,
                                          max_per_address=config.max_prehello_per_address,
                                          max_waiting=config.max_prehello))
    liveness = NodeLiveness(registry, bus, config.thresholds)
    leadership = Leadership(leader_lock(driver), replica_id=replica_id)
    nodes = NodeViews(registry, config.thresholds, replica_id=replica_id,
                      remote_session=peeks.session)
    commands = CommandService(store, router, bus, presence=registry,
                              liveness=liveness.liveness,
                              max_frame_bytes=config.max_frame_bytes,
                              stored_liveness=lambda row: nodes.view(row)["liveness"])
    rtc = RtcService(router, bus, RtcCounters(metrics))
    rollouts = RolloutService(store, commands, bus, view=nodes.view)
    rollout_driver = RolloutDriver(rollouts, is_leader=lambda: leadership.is_leader)
    rollouts.wake = rollout_driver.wake
    gateway = EdgeGateway(EdgeServices(
        store=store, registry=registry, bus=bus, monitor=monitor, admission=admission,
        config=config, node_changed=liveness.node_changed, stopping=run.is_stopping,
        controller_id=run.get_controller_id, replica_id=replica_id, router=router,
        counters=EdgeCounters(metrics), rtc=rtc, bundle_reported=rollout_driver.wake))
    sweeper = Sweeper(store, bus, gateway.connections, expire_closed=liveness.expire,
                      sweep_interval_s=config.sweep_interval_s,
                      touch_interval_s=config.node_touch_interval_s,
                      downlink_check_s=config.downlink_check_s,
                      is_leader=lambda: leadership.is_leader,
                      audit_max_age_s=config.audit_max_age_s,
                      max_audit_records=config.audit_max_records)
    jobs = JobService(store, commands, bus, view=nodes.view)
    job_driver = JobDriver(jobs, store, is_leader=lambda: leadership.is_leader)
    jobs.wake = job_driver.wake
    bundles = BundleService(store, max_bundle_bytes=config.max_bundle_bytes,
                            max_total_bytes=config.max_bundle_bytes_total or None,
                            chunk_bytes=config.bundle_chunk_bytes)
    return Controller(config=config, run=run, replica_id=replica_id, driver=driver,
                      store=store, registry=registry, router=router, bus=bus,
                      cluster=cluster, monitor=monitor, peeks=peeks, admission=admission,
                      liveness=liveness, nodes=nodes,
                      commands=commands, gateway=gateway, leadership=leadership,
                      sweeper=sweeper, jobs=jobs, job_driver=job_driver, metrics=metrics,
                      rtc=rtc, bundles=bundles, rollouts=rollouts,
                      rollout_driver=rollout_driver)


async def _open_store(ctl: Controller) -> None:
    try:
        await ctl.driver.open()
    except StoreError as exc:
        where = (redact_url(str(ctl.config.store)) if ctl.shared_store
                 else str(ctl.config.store))
        raise StartError(f"cannot open the store at {where}: {exc}") from None


async def _open_cluster(cluster: Cluster) -> None:
    try:
        await cluster.link.start()
    except NatsUnavailable as exc:
        raise StartError(redact_url(exc.reason)) from None
    await cluster.bus.start()
    await cluster.router.start()


async def _close_cluster(cluster: Cluster) -> None:
    await cluster.router.close()
    await cluster.bus.close()
    await cluster.link.close()


async def start(ctl: Controller) -> asyncio.Task[None]:
    """Open the store, make sure the admin token exists, close the sessions this replica
    left open (every open session on a store of its own), connect to NATS (link, bus,
    router, in that order), start contending for leadership (services/leader.py) and start
    the sweeper (returned: its owner cancels and awaits it in :func:`stop`). Raises
    :class:`StartError` when the store or NATS cannot be reached, having closed whatever it
    had opened."""
    ctl.config.data_dir.mkdir(parents=True, exist_ok=True)
    await _open_store(ctl)
    try:
        ctl.run.controller_id = await ctl.store.controller_id()
        await ensure_admin_token(ctl.store, ctl.config.admin_token_path)
        orphans = await ctl.store.close_orphan_sessions(
            ctl.replica_id if ctl.shared_store else None)
        if orphans:
            logger.info("closed sessions left open by the previous run",
                        extra={"count": orphans, "replica_id": ctl.replica_id})
        if ctl.cluster is not None:
            try:
                await _open_cluster(ctl.cluster)
            except BaseException:
                await _close_cluster(ctl.cluster)
                raise
    except StoreError as exc:
        await ctl.driver.close()
        raise StartError(f"cannot use the store: {exc}") from None
    except BaseException:
        await ctl.driver.close()
        raise
    await ctl.leadership.start()
    sweeper = asyncio.create_task(ctl.sweeper.run(), name="liveness-sweeper")
    ctl.job_driver.start()
    ctl.rollout_driver.start()
    logger.info("controller started", extra={
        "controller_id": ctl.run.controller_id, "replica_id": ctl.replica_id,
        "data_dir": str(ctl.config.data_dir),
        "store": redact_url(str(ctl.config.store)) if ctl.shared_store else "sqlite",
        "bus": redact_url(ctl.config.bus_url) if ctl.config.bus_url else "local"})
    return sweeper


async def stop(ctl: Controller, sweeper: asyncio.Task[None] | None) -> None:
    """Refuse new edge sessions, stop the sweeper, give leadership up, close every edge
    session with 1001, close NATS (router, bus, link), then close the store: the reverse
    of :func:`start`."""
    ctl.run.stopping = True
    await ctl.rollout_driver.stop()
    await ctl.job_driver.stop()  # started after the sweeper: stopped before it
    if sweeper is not None:
        await cancel_and_wait(sweeper)
    await ctl.leadership.stop()
    await ctl.gateway.close_sessions()
    if ctl.cluster is not None:
        await _close_cluster(ctl.cluster)
    await ctl.driver.close()


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    controller: Controller = app.state.controller
    try:
        sweeper = await start(controller)
    except StartError as exc:
        controller.run.start_error = str(exc)  # server.py reports it, one line
        raise
    try:
        yield
    finally:
        await stop(controller, sweeper)


def edge_fast_path(app: Starlette) -> ASGIApp:
    """``app`` with edge sessions dispatched straight to :func:`edge_session`, past
    Starlette's middleware and router: each idle session otherwise keeps about ten more
    suspended coroutine frames and their closures alive (~3 KiB, at 10,000 sessions ~30 MiB).
    Everything else, lifespan included, goes to ``app``."""
    gateway: EdgeGateway = app.state.edge

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == EDGE_PATH:
            await edge_session(WebSocket(scope, receive, send), gateway)
        else:
            await app(scope, receive, send)

    return asgi


def create_app(config: ControllerConfig) -> Starlette:
    """The Starlette app of a controller built from ``config``. ``app.state`` holds what
    each part reads: ``edge`` (gateway), ``browser`` (/ws), ``api`` (REST), and
    ``controller``, everything, for the lifespan and the server."""
    ctl = build(config)
    routes = [
        WebSocketRoute(EDGE_PATH, edge_endpoint),
        WebSocketRoute("/ws", browser_endpoint),
        WebSocketRoute("/api/v1/nodes/{node_id}/shell", io_api.shell_endpoint),
        WebSocketRoute("/api/v1/commands/{command_id}/io", io_api.command_io_endpoint),
        Route("/v1/edge/enroll", api.enroll, methods=["POST"]),
        *api.ROUTES,
        *api_jobs.ROUTES,
        *api_rollouts.ROUTES,
        *api_bundles.ROUTES,
        *api_rtc.ROUTES,
        *admin_api.ROUTES,
        *api_metrics.ROUTES,
        *api_openapi.ROUTES,
        *dashboard_routes(),
    ]
    app = Starlette(routes=routes, lifespan=_lifespan,
                    exception_handlers=api.EXCEPTION_HANDLERS,
                    middleware=[Middleware(AuditMiddleware)])
    app.state.controller = ctl
    app.state.edge = ctl.gateway
    app.state.browser = BrowserServices(store=ctl.store, commands=ctl.commands,
                                        nodes=ctl.nodes, bus=ctl.bus, peeks=ctl.peeks,
                                        config=config, jobs=ctl.jobs, rtc=ctl.rtc,
                                        rollouts=ctl.rollouts)
    app.state.api = api.ApiServices(
        store=ctl.store, commands=ctl.commands, nodes=ctl.nodes, router=ctl.router,
        bus=ctl.bus, presence=ctl.registry, monitor=ctl.monitor, peeks=ctl.peeks,
        admission=ctl.admission,
        probe=DriverProbe(ctl.store), run=ctl.run, loop_lag=ctl.sweeper,
        edge_pending=ctl.gateway.pending_bytes, durability=config.durability,
        store_figures=CachedStoreFigures(ctl.store, count_liveness=functools.partial(
            nodes_by_liveness, ctl.store, ctl.nodes.view)),
        is_leader=lambda: ctl.leadership.is_leader,
        nats_samples=None if ctl.cluster is None else functools.partial(
            nats_samples, ctl.cluster.link, ctl.cluster.bus, ctl.cluster.router),
        replica_id=ctl.replica_id)
    app.state.metrics = api_metrics.MetricsServices.build(
        ctl.metrics, api=app.state.api, edge=ctl.gateway.services.counters,
        ws=app.state.browser.counters,
        outbox_frames=ctl.gateway.outbox_frames,
        require_token=config.metrics_require_token, sessions=ctl.registry.all)
    app.state.jobs = ctl.jobs
    app.state.rtc = ctl.rtc
    app.state.bundles = ctl.bundles
    app.state.rollouts = ctl.rollouts
    app.state.rtc_page_config = api_rtc.page_config(config)
    app.state.version = __version__
    return app
