"""``tether node status``: what the node's state dir says, without talking to the runtime.

Reads ``node.json``, ``runtime.pid``, the runtime's ``status.json`` snapshot and the store
(read-only), so it works whether or not the runtime is running.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from tether.common.procfile import read_pid

from .bundles import bundles_on_disk


def _get_json(url_file: Path, path: str) -> dict[str, Any] | None:
    """GET a loopback status endpoint whose URL a process wrote; None if it is not there."""
    try:
        url = url_file.read_text().strip()
        resp = httpx.get(url + path, timeout=2)
        return resp.json()  # type: ignore[no-any-return]
    except (OSError, httpx.HTTPError, ValueError):
        return None


def node_status(state_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"state_dir": str(state_dir)}
    meta_path = state_dir / "node.json"
    if not meta_path.exists():
        out["enrolled"] = False
        return out
    meta = json.loads(meta_path.read_text())
    out.update(enrolled=True, node_id=meta["node_id"], controller=meta["controller_url"])
    pid = read_pid(state_dir / "runtime.pid")
    out["runtime"] = {"running": pid is not None, "pid": pid}
    live = _get_json(state_dir / "runtime.status.url", "/status") if pid else None
    if live is not None:
        out.update(live=True, readiness=live["readiness"], matrix=live["matrix"],
                   transport=live["transport"], sidecar=live["sidecar"],
                   live_incidents=live["incidents"], logs=live.get("logs"),
                   rtc=live.get("rtc"), bundles=live.get("bundles"))
    else:
        out["bundles"] = bundles_on_disk(state_dir)
    sidecar = _get_json(state_dir / "sidecar.status.url", "/status")
    if sidecar is not None:
        out["sidecar_process"] = {"pid": sidecar["pid"], "version": sidecar["version"],
                                  "runtime": sidecar["runtime"]}
        out.setdefault("transport", sidecar["transport"])
    status_path = state_dir / "status.json"
    if live is None and pid is not None and status_path.exists():
        try:
            snap = json.loads(status_path.read_text())
        except ValueError:
            snap = {}
        out["transport"] = snap.get("transport")
        out["snapshot_age_s"] = round(time.time() - snap.get("updated_at", 0), 1)
        out["logs"] = snap.get("logs")
    db = state_dir / "node.db"
    if db.exists():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            depth, oldest = conn.execute("SELECT count(*), min(created_at) FROM uplink_outbox"
                                         ).fetchone()
            out["outbox"] = {"depth": depth, "oldest_age_s": None if oldest is None
                             else round(time.time() - oldest, 1)}
            out["commands"] = dict(conn.execute(
                "SELECT state, count(*) FROM commands GROUP BY state").fetchall())
            out["incidents"] = [{"at": r[0], "class": r[1], "message": r[2]} for r in
                                conn.execute("SELECT at, class, message FROM incidents "
                                             "ORDER BY id DESC LIMIT 10")]
        except sqlite3.Error as exc:
            out["store_error"] = str(exc)
        finally:
            conn.close()
    return out
