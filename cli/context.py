"""CLI contexts: named controllers in one config file, as kubeconfig does.

The file is ``$TETHER_CONFIG``, else ``~/.config/tether/config.json``::

    {"current": "lab",
     "contexts": {"lab": {"url": "https://ctl:8700", "token_file": "~/.tether/lab.token",
                          "ca_file": "/etc/tether/ca.pem", "pins": ["ab12..."]}}}

Each context has ``url`` and either ``token`` or ``token_file``, and optionally ``ca_file``
and ``pins``. Precedence, per setting: the flag (``--url``, ``--token``, ``--ca-file``,
``--pin-sha256``), then the environment (``TETHER_URL``, ``TETHER_TOKEN``), then the
current context (``--context NAME`` or ``TETHER_CONTEXT`` chooses another), then the local
controller's data dir. Invariants: the file is written 0600 (it may hold tokens), atomically
(a temporary file renamed over it); ``context list`` never prints a token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tether.common.tlspin import normalize_pins

from .client import CliError
from .render import human

CONTEXT_KEYS = ("url", "token", "token_file", "ca_file", "pins")


def config_path() -> Path:
    env = os.environ.get("TETHER_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tether" / "config.json"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The config file's contents (empty when there is none); a broken one is an error
    that names the file, never silently ignored."""
    path = path or config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"current": None, "contexts": {}}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the CLI config {path}: {exc}; fix or remove it", 2) \
            from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts", {}), dict):
        raise CliError(f"the CLI config {path} is not a JSON object with 'contexts'; fix or "
                       "remove it", 2)
    data.setdefault("contexts", {})
    data.setdefault("current", None)
    return data


def save_config(data: dict[str, Any], path: Path | None = None) -> Path:
    """Write the config 0600, atomically (module invariants)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)  # an old tmp file may have had another mode
    os.replace(tmp, path)
    return path


def current_context(name: str | None = None) -> dict[str, Any]:
    """The context named ``name`` (or ``TETHER_CONTEXT``, or the file's current one); empty
    when none is set. A name that is not in the file is a usage error."""
    data = load_config()
    chosen = name or os.environ.get("TETHER_CONTEXT") or data.get("current")
    if not chosen:
        return {}
    ctx = data["contexts"].get(chosen)
    if not isinstance(ctx, dict):
        raise CliError(f"no context {chosen!r} in {config_path()}: see 'tether context "
                       "list'", 2)
    return ctx


def context_token(ctx: dict[str, Any]) -> str | None:
    if ctx.get("token"):
        return str(ctx["token"]).strip()
    if ctx.get("token_file"):
        path = Path(str(ctx["token_file"])).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read the context's token_file {path}: {exc}") from None
    return None


def context_command(args: argparse.Namespace) -> int:
    """``tether context list|use|set|delete``."""
    data = load_config()
    contexts: dict[str, Any] = data["contexts"]
    verb = args.verb
    if verb == "list":
        rows = [{"name": name, "current": name == data.get("current"),
                 "url": ctx.get("url"),
                 "token": "file " + str(ctx["token_file"]) if ctx.get("token_file")
                 else ("set" if ctx.get("token") else None),
                 "ca_file": ctx.get("ca_file"), "pins": len(ctx.get("pins") or [])}
                for name, ctx in sorted(contexts.items()) if isinstance(ctx, dict)]
        if args.json:
            print(json.dumps({"current": data.get("current"), "config": str(config_path()),
                              "contexts": rows}, indent=2))
            return 0
        if not rows:
            print(f"no contexts in {config_path()}: add one with 'tether context set NAME "
                  "--url URL --token-file FILE'", file=sys.stderr)
            return 0
        print(f"{'':1} {'NAME':<16} {'URL':<32} {'TOKEN':<20} CA/PINS")
        for r in rows:
            tls = f"{human(r['ca_file'])} / {r['pins']} pin(s)"
            print(f"{'*' if r['current'] else ' '} {human(r['name']):<16} "
                  f"{human(r['url']):<32} {human(r['token']):<20} {tls}")
        return 0
    name = args.name
    if verb == "use":
        if name not in contexts:
            raise CliError(f"no context {name!r}: see 'tether context list'", 2)
        data["current"] = name
        save_config(data)
        print(f"using context {name}")
        return 0
    if verb == "delete":
        if name not in contexts:
            raise CliError(f"no context {name!r}: see 'tether context list'", 2)
        del contexts[name]
        if data.get("current") == name:
            data["current"] = None
        save_config(data)
        print(f"deleted context {name}")
        return 0
    # set: create or update; only the given settings change
    ctx = dict(contexts.get(name) or {})
    if args.url:
        ctx["url"] = args.url.rstrip("/")
    if args.token is not None:
        ctx["token"] = args.token
        ctx.pop("token_file", None)
    if args.token_file is not None:
        ctx["token_file"] = str(Path(args.token_file).expanduser().resolve())
        ctx.pop("token", None)
    if args.ca_file is not None:
        ctx["ca_file"] = str(Path(args.ca_file).expanduser().resolve())
    if args.pin_sha256:
        ctx["pins"] = sorted(normalize_pins(args.pin_sha256))
    if not ctx.get("url"):
        raise CliError(f"context {name!r} needs --url", 2)
    contexts[name] = ctx
    if args.use or not data.get("current"):
        data["current"] = name
    path = save_config(data)
    print(f"context {name} saved in {path}"
          + (" (current)" if data["current"] == name else ""))
    return 0


def add_context_parser(nouns: Any) -> None:
    """``tether context ...`` (called from cli/main.py's build_parser)."""
    ctx = nouns.add_parser(
        "context", help="named controllers in the CLI config, as kubeconfig does",
        description="Contexts live in $TETHER_CONFIG, else ~/.config/tether/config.json "
                    "(written 0600). The current one supplies --url, --token, --ca-file "
                    "and --pin-sha256 defaults; flags, then TETHER_URL/TETHER_TOKEN, win "
                    "over it.").add_subparsers(dest="verb", required=True)
    clist = ctx.add_parser("list", help="contexts, the current one starred (tokens are "
                                        "never shown)")
    clist.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for verb, text in (("use", "make NAME the current context"),
                       ("delete", "remove context NAME")):
        p = ctx.add_parser(verb, help=text)
        p.add_argument("name", help="the context's name")
        p.add_argument("--json", action="store_true", help="errors as JSON on stderr")
    cset = ctx.add_parser("set", help="create or update context NAME (only the given "
                                      "settings change)")
    cset.add_argument("name", help="the context's name")
    cset.add_argument("--url", help="the controller's URL, e.g. https://ctl:8700")
    token = cset.add_mutually_exclusive_group()
    token.add_argument("--token", help="the operator token, stored in the file (0600)")
    token.add_argument("--token-file", help="read the token from this file at each use")
    cset.add_argument("--ca-file", help="CA bundle to trust for the controller's TLS")
    cset.add_argument("--pin-sha256", action="append", default=[],
                      help="accept only a controller certificate with this SHA-256 "
                           "(hex of its DER form; repeatable)")
    cset.add_argument("--use", action="store_true", help="also make it the current context")
    cset.add_argument("--json", action="store_true", help="errors as JSON on stderr")
