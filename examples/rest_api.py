"""Drive the REST API of a running controller (start one with ``make demo``):
list nodes, run a command, follow it to the end, read its output.

    .venv/bin/python examples/rest_api.py [NODE_ID]

URL and token come from TETHER_URL / TETHER_TOKEN or ./.tether/controller/.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

DATA = Path(".tether/controller")
url = os.environ.get("TETHER_URL") or (DATA / "controller.url").read_text().strip()
token = os.environ.get("TETHER_TOKEN") or (DATA / "admin.token").read_text().strip()
api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

nodes = api.get("/api/v1/nodes").json()["items"]
for node in nodes:
    print(f"{node['node_id']:<16} {node['liveness']:<9} {node['labels']}")
node_id = sys.argv[1] if len(sys.argv) > 1 else nodes[0]["node_id"]

# Idempotency-Key: retrying this POST after a network error cannot create a second command.
resp = api.post(f"/api/v1/nodes/{node_id}/commands",
                json={"kind": "exec", "args": {"argv": ["uname", "-a"]}, "ttl_s": 60},
                headers={"Idempotency-Key": f"example-{int(time.time())}"})
resp.raise_for_status()
command_id = resp.json()["command_id"]
print("queued", command_id)

# This script polls for brevity; `tether exec` and browsers get the same changes pushed
# over /ws (topics command:<id> and logs:<id>).
deadline = time.monotonic() + 30
while (cmd := api.get(f"/api/v1/commands/{command_id}").json())["state"] not in {
        "succeeded", "failed", "cancelled", "expired", "rejected"}:
    if time.monotonic() > deadline:
        sys.exit(f"{command_id} still {cmd['state']} after 30 s")
    time.sleep(0.2)
print("state", cmd["state"], "exit code", cmd["exit_code"])
for item in api.get(f"/api/v1/commands/{command_id}/logs").json()["items"]:
    print(f"[{item['source']}] {item['data']}", end="")
for event in cmd["timeline"]:
    print(f"  {event['at']}  {event['state']}")
