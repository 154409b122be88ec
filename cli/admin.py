"""Operator tokens, the audit log, join-token list/revoke and node removal:
``tether token create|list|revoke``, ``tether audit``, ``tether join-token list|revoke``,
``tether nodes delete|disable|enable``. Each needs an ``admin`` token (docs/security.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .operator import api_from, parse_duration, print_table

ROLES = ("viewer", "operator", "admin")  # = tether.controller.domain.roles.ROLES
Flags = Callable[..., None]  # main._operator_flags


def add_nouns(nouns: Any, flags: Flags) -> None:
    """``tether token ...`` and ``tether audit``."""
    tok = nouns.add_parser("token", help="operator tokens and their roles (admin)"
                           ).add_subparsers(dest="verb", required=True)
    create = tok.add_parser("create", help="make a token; prints its secret once")
    create.add_argument("--role", required=True, choices=ROLES,
                        help="viewer: read only; operator: also run commands, jobs and "
                             "shells; admin: also tokens, join tokens, node disable/delete")
    create.add_argument("--ttl", help="expire after this long, e.g. 8h, 30d (default: never)")
    create.add_argument("--name", help="who or what holds it, shown in the list and audit")
    flags(create)
    flags(tok.add_parser("list", help="every token: id, role, name, state (no secrets)"))
    revoke = tok.add_parser("revoke", help="revoke a token: it gets 401 from now on")
    revoke.add_argument("token_id", help="the id from 'tether token list' (tk_...)")
    flags(revoke)
    audit = nouns.add_parser("audit", help="who changed what, newest first (admin)")
    audit.add_argument("--limit", type=int, default=50, help="records to show (1-1000)")
    audit.add_argument("--before", type=int, help="records older than this id (paging)")
    flags(audit)


def add_join_token_verbs(jt: Any, flags: Flags) -> None:
    flags(jt.add_parser("list", help="join tokens that can still enroll (no secrets)"))
    revoke = jt.add_parser("revoke", help="revoke a join token: it enrolls nothing more")
    revoke.add_argument("token_id", help="the id from 'tether join-token list' (jt_...)")
    flags(revoke)


def add_nodes_verbs(nodes: Any, flags: Flags) -> None:
    delete = nodes.add_parser("delete", help="close its session and remove the node, its "
                              "key and its data; the id can enroll again (admin)")
    delete.add_argument("node_id")
    flags(delete)
    for verb, what in (("disable", "close its session (4403) and refuse it until enabled"),
                       ("enable", "accept its sessions again")):
        p = nodes.add_parser(verb, help=f"{what} (admin)")
        p.add_argument("node_id")
        flags(p)


def handles(noun: str, verb: str | None) -> bool:
    return (noun in ("token", "audit") or (noun == "join-token" and verb in ("list", "revoke"))
            or (noun == "nodes" and verb in ("delete", "disable", "enable")))


def run(args: argparse.Namespace) -> int:
    noun, verb = args.noun, getattr(args, "verb", None)
    api = api_from(args)
    if noun == "token" and verb == "create":
        body: dict[str, Any] = {"role": args.role, "name": args.name,
                                "ttl_s": None if args.ttl is None else parse_duration(args.ttl)}
        out = api.post("/api/v1/tokens", json=body)
        if args.json:
            print(json.dumps(out))
        else:
            print(out["token"])
            print(f"{out['token_id']}: {out['role']}, expires "
                  f"{out.get('expires_at') or 'never'}; the secret is shown only now",
                  file=sys.stderr)
        return 0
    if noun == "token" and verb == "list":
        items = api.get("/api/v1/tokens")["items"]
        return _table(args, items, ["token_id", "role", "name", "state", "created_at",
                                    "expires_at"])
    if noun == "token":
        out = api.request("DELETE", f"/api/v1/tokens/{args.token_id}")
        return _done(args, out, f"revoked {args.token_id}")
    if noun == "audit":
        params: dict[str, Any] = {"limit": args.limit}
        if args.before is not None:
            params["before"] = args.before
        page = api.get("/api/v1/audit", params=params)
        if args.json:
            print(json.dumps(page, indent=2))
            return 0
        print_table(page["items"], ["id", "at", "actor", "role", "action", "target",
                                    "status"])
        if page.get("next_before"):
            print(f"older: tether audit --before {page['next_before']}", file=sys.stderr)
        return 0
    if noun == "join-token" and verb == "list":
        items = api.get("/api/v1/join-tokens")["items"]
        for item in items:
            item["labels"] = ",".join(f"{k}={v}" for k, v in (item.get("labels") or {}
                                                              ).items()) or None
        return _table(args, items, ["token_id", "uses_left", "expires_at", "labels"])
    if noun == "join-token":
        out = api.request("DELETE", f"/api/v1/join-tokens/{args.token_id}")
        return _done(args, out, f"revoked {args.token_id}")
    if verb in ("disable", "enable"):
        out = api.post(f"/api/v1/nodes/{args.node_id}/{verb}")
        return _done(args, out, f"{verb}d {args.node_id}")
    out = api.request("DELETE", f"/api/v1/nodes/{args.node_id}")
    return _done(args, out, f"deleted {args.node_id}" + (
        " (its session was closed)" if out.get("session_closed") else ""))


def _table(args: argparse.Namespace, items: list[dict[str, Any]], columns: list[str]) -> int:
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        print_table(items, columns)
    return 0


def _done(args: argparse.Namespace, out: Any, line: str) -> int:
    print(json.dumps(out) if args.json else line)
    return 0
