"""docs/operations.md's cluster chapter, kept honest: its HAProxy and nginx recipes are
configurations those servers accept, every flag it names is a flag of the CLI, and its NATS
subject table is exactly the subjects the controller's code publishes, requests and
subscribes to."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats.errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.controller.services.nats_bus import NatsBus
from tether.controller.services.nats_router import NatsRouter
from tether.controller.services.peek import PeekRequest
from tether.controller.services.registry import SessionRegistry
from tether.protocol.frames import Frame
from tether.tools.servers import ServerUnavailable

from ..conftest import server_unavailable

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
CLUSTER_HEADING = "## More than one controller"


def cluster_chapter() -> str:
    """The doc's cluster chapter: from its heading to the next ``## `` heading."""
    text = DOC.read_text()
    start = text.index(CLUSTER_HEADING)
    end = text.find("\n## ", start + len(CLUSTER_HEADING))
    return text[start:end if end != -1 else len(text)]


def fenced(language: str) -> str:
    """The one code block of the chapter fenced as ``language``."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", cluster_chapter(), re.S | re.M)
    assert len(blocks) == 1, f"expected one ```{language} block in the cluster chapter"
    return str(blocks[0])


def binary(name: str) -> str:
    """``name``'s path, or skip (fail under CI) the way unavailable servers do."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None)
    if found is None:
        server_unavailable(ServerUnavailable(
            f"{name} is not installed: apt-get install {name} (the doc's recipe is checked "
            "with it)"))
    return found


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key, standing in for the recipes' real ones."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tether.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# -- the load-balancer recipes --------------------------------------------------------------


def test_the_haproxy_recipe_is_a_configuration_haproxy_accepts(tmp_path: Path) -> None:
    haproxy = binary("haproxy")
    recipe = fenced("haproxy")
    for line in ("mode http", "balance roundrobin", "option redispatch", "retries 3",
                 "timeout tunnel 1h", "option httpchk GET /api/v1/health"):
        assert re.search(rf"^\s*{re.escape(line)}\b", recipe, re.M), line
    assert not re.search(r"^\s*(stick|cookie|balance source)", recipe, re.M)  # no stickiness
    cert, key = self_signed(tmp_path)
    pem = tmp_path / "tether.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    assert "/etc/haproxy/tether.pem" in recipe
    config = tmp_path / "haproxy.cfg"
    config.write_text(recipe.replace("/etc/haproxy/tether.pem", str(pem)))
    done = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_nginx_recipe_is_a_configuration_nginx_accepts(tmp_path: Path) -> None:
    nginx = binary("nginx")
    recipe = fenced("nginx")
    for line in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $connection_upgrade;",
                 "proxy_set_header Host $http_host;", "proxy_read_timeout 1h;"):
        assert line in recipe, line
    assert not re.search(r"^\s*(ip_hash|hash|sticky)\b", recipe, re.M)  # no stickiness
    cert, key = self_signed(tmp_path)
    recipe = (recipe.replace("/etc/nginx/tether/cert.pem", str(cert))
              .replace("/etc/nginx/tether/key.pem", str(key)))
    # The recipe is a conf.d file: nginx.conf's http block includes it.
    config = tmp_path / "nginx.conf"
    config.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                      f"events {{}}\nhttp {{\n{recipe}\n}}\n")
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                           "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


# -- flags ----------------------------------------------------------------------------------


def help_flags(*command: str) -> set[str]:
    """The long flags ``tether <command> --help`` lists."""
    done = subprocess.run([sys.executable, "-m", "tether.cli.main", *command, "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout))


def test_every_flag_the_cluster_chapter_names_is_a_flag_of_the_cli() -> None:
    serve = help_flags("controller", "serve")
    chapter = cluster_chapter()
    # Every flag on a `tether controller serve` command line is one of serve's.
    serve_lines = re.findall(r"tether controller serve(?:[^\n]*\\\n)*[^\n]*", chapter)
    assert serve_lines, "the chapter shows how to start a replica"
    on_serve = {flag for line in serve_lines for flag in re.findall(r"--[a-z][a-z0-9-]*", line)}
    assert {"--store", "--bus", "--replica-id", "--data-dir"} <= on_serve
    assert on_serve <= serve, on_serve - serve
    # Every other flag it names belongs to the commands it speaks of.
    known = serve | help_flags("node", "enroll") | help_flags("node", "run")
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", chapter))
    assert named <= known, named - known


# -- NATS subjects --------------------------------------------------------------------------


class _Sub:
    async def unsubscribe(self) -> None:
        pass


class _RecordingNc:
    """nats-py's client as the router and bus use it, recording every subject."""

    is_connected = True

    def __init__(self, seen: set[str]) -> None:
        self.seen = seen

    async def subscribe(self, subject: str, **_: Any) -> _Sub:
        self.seen.add(subject)
        return _Sub()

    async def request(self, subject: str, payload: bytes, **_: Any) -> Any:
        self.seen.add(subject)
        raise nats.errors.NoRespondersError

    async def flush(self) -> None:
        pass


class _RecordingLink:
    """NatsLink's surface for the router and the bus; ``refuse`` makes publishing fail
    (NATS down)."""

    prefix = "tether"
    replica_id = "r-a"
    publish_timeout_s = 1.0
    connected = True

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.nc = _RecordingNc(self.seen)
        self.refuse = False
        self.listeners: list[Any] = []

    def publish_nowait(self, subject: str, payload: bytes) -> bool:
        if self.refuse:
            return False
        self.seen.add(subject)
        return True

    def on_reconnect(self, listener: Any) -> None:
        self.listeners.append(listener)


async def subjects_the_code_uses(node_id: str, topic: str) -> set[str]:
    """Every subject the router and the bus publish, request or subscribe to, driven
    through their public calls (and a reconnect after lost nudges, for ``rescan``)."""
    link = _RecordingLink()
    router = NatsRouter(SessionRegistry(), link, max_unsent_nudges=0)  # type: ignore[arg-type]
    bus = NatsBus(link)  # type: ignore[arg-type]
    await router.start()
    await bus.start()
    router.nudge(node_id)
    await router.send(node_id, Frame(t="rtc.offer", id="o-1", b={"sdp": "v=0"}))
    await router.disable(node_id)
    await router.supersede(node_id, "s_" + "0" * 32)
    await router.peek(node_id, PeekRequest(monitor=True))
    bus.publish(topic, "node.changed", {"node_id": node_id})
    link.refuse = True
    router.nudge(node_id)  # lost past max_unsent_nudges: a rescan after the reconnect
    link.refuse = False
    for listener in link.listeners:
        await listener()
    await router.close()
    await bus.close()
    return link.seen


async def test_the_nats_subjects_table_lists_exactly_the_subjects_the_code_uses() -> None:
    rows = re.findall(r"^\s*\| `(tether\.[^`]+)` \|", cluster_chapter(), re.M)
    assert rows, "the chapter has a table of NATS subjects"
    documented = {row.replace("<node>", "n-1").replace("<topic>", "node:n-1") for row in rows}
    used = await subjects_the_code_uses("n-1", "node:n-1")
    # subscriptions with a wildcard stand for the subjects the table lists one by one
    used -= {"tether.ev.*"}
    assert documented == used
