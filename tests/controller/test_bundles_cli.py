"""`tether bundle publish FILE` and `tether bundle list` against a real controller: what
they print, with and without --json, and a conflict's one-line error and exit 1."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from ..helpers import ControllerProc, tether_cmd
from .bundlefiles import make_bundle


def tether(ctl: ControllerProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tether_cmd(*args, "--url", ctl.url, "--token", ctl.token),
                          capture_output=True, text=True, timeout=60)


def test_publish_prints_name_version_sha256_and_list_shows_it(
        controller: ControllerProc, tmp_path: Path) -> None:
    raw = make_bundle("web", 2)
    path = tmp_path / "web-2.bundle"
    path.write_bytes(raw)
    done = tether(controller, "bundle", "publish", str(path))
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(raw).hexdigest()
    assert "web version 2" in done.stdout and digest in done.stdout
    again = tether(controller, "bundle", "publish", str(path), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"name": "web", "version": 2, "sha256": digest,
                                        "size": len(raw)}
    listed = tether(controller, "bundle", "list", "--json")
    assert [(b["name"], b["version"]) for b in json.loads(listed.stdout)] == [("web", 2)]
    table = tether(controller, "bundle", "list")
    assert table.returncode == 0 and "web" in table.stdout and digest[:16] in table.stdout
    path.write_bytes(make_bundle("web", 2))  # other bytes, same version
    refused = tether(controller, "bundle", "publish", str(path))
    assert refused.returncode == 1 and "never changes" in refused.stderr
    missing = tether(controller, "bundle", "publish", str(tmp_path / "nope.bundle"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
