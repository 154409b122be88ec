"""Fuzz the REST bodies and query strings through the real app in process: the enroll body
(the only body an unauthenticated peer can send), the operator's join-token and command
bodies, and the read endpoints' query parameters.

Every request answers below 500, a 4xx with the one JSON error shape, and the operator's
reads answer 200 afterwards. Crashes already pinned for another slice
(``targets_asgi.KNOWN_ELSEWHERE``) are let through so these keep looking for new ones.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st

from .asgi import Controller, assert_error_shape
from .strategies import deep_json, fuzz_settings, json_text, json_values
from .targets_asgi import READS, known_elsewhere

TOKEN = "@TOKEN@"  # replaced by the controller's valid join token


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# Keys a hostile enroller tries: of every length, all-zero and small-order points included.
public_keys = (st.binary(min_size=0, max_size=40).map(b64url)
               | st.sampled_from([b64url(bytes(32)), b64url(b"\x01" + bytes(31)),
                                  b64url(b"\xff" * 32), "A" * 43 + "=", "!!", ""])
               | json_text | json_values)
node_ids = (st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
            | st.sampled_from([Controller.node_id, "", "A", "a" * 64]) | json_values)
labels = (st.dictionaries(json_text, json_text, max_size=4) | json_values
          | st.dictionaries(st.text(max_size=70), st.text(max_size=300), max_size=70))
enroll_bodies = st.fixed_dictionaries({}, optional={
    "join_token": st.just(TOKEN) | json_text | json_values, "node_id": node_ids,
    "public_key": public_keys, "labels": labels})


def send(ctl: Controller, method: str, path: str, obj: Any, *, auth: bool) -> None:
    """One request with ``obj`` as its JSON body (Python's encoder: NaN, big integers and
    escaped lone surrogates go out as a hostile client sends them)."""
    body = None if obj is None else json.dumps(obj).replace(TOKEN, ctl.join_token).encode()
    try:
        resp = ctl.rest(method, path, body, auth=auth)
        assert_error_shape(resp)
        for read in READS:
            got = ctl.rest("GET", read)
            assert got.status_code == 200, (read, got.status_code, got.text[:300])
    except Exception as exc:
        if known_elsewhere(exc) is None:
            raise


@fuzz_settings(300)
@given(body=enroll_bodies | json_values)
def test_any_enroll_body_answers_below_500_with_the_json_error_shape(
        ctl: Controller, body: Any) -> None:
    send(ctl, "POST", "/v1/edge/enroll", body, auth=False)


@fuzz_settings(60)
@given(raw=st.binary(max_size=200) | deep_json)
def test_any_enroll_bytes_answer_below_500_with_the_json_error_shape(
        ctl: Controller, raw: bytes) -> None:
    try:
        assert_error_shape(ctl.rest("POST", "/v1/edge/enroll", raw, auth=False))
    except Exception as exc:
        if known_elsewhere(exc) is None:
            raise


@fuzz_settings(60)
@given(path=st.sampled_from(["/api/v1/join-tokens",
                             f"/api/v1/nodes/{Controller.node_id}/commands"]),
       body=json_values)
def test_an_operator_body_without_a_token_is_refused_with_401(
        ctl: Controller, path: str, body: Any) -> None:
    resp = ctl.rest("POST", path, json.dumps(body).encode(), auth=False)
    assert resp.status_code == 401, resp.text
    assert_error_shape(resp)


@fuzz_settings(150)
@given(body=st.fixed_dictionaries({}, optional={
    "uses": json_values, "ttl_s": json_values, "labels": labels}) | json_values)
def test_any_join_token_body_answers_below_500(ctl: Controller, body: Any) -> None:
    send(ctl, "POST", "/api/v1/join-tokens", body, auth=True)


exec_args = st.fixed_dictionaries({}, optional={
    "argv": st.lists(json_text, max_size=3) | json_values,
    "env": st.dictionaries(json_text, json_text, max_size=3) | json_values,
    "cwd": json_text | json_values, "timeout_s": json_values})


@fuzz_settings(200)
@given(body=st.fixed_dictionaries({
    "kind": st.sampled_from(["exec", "cancel", "pause", "resume", "x"]) | json_values,
    "args": st.dictionaries(json_text, json_values, max_size=4) | exec_args | json_values},
    optional={"ttl_s": json_values,
              "offline": st.sampled_from(["queue", "fail"]) | json_values}) | json_values)
def test_any_command_body_answers_below_500_and_reads_stay_200(
        ctl: Controller, body: Any) -> None:
    send(ctl, "POST", f"/api/v1/nodes/{Controller.node_id}/commands", body, auth=True)


query_values = (st.integers().map(str) | st.sampled_from(["", "-1", "1e3", "0x10", " 1"])
                | st.text(max_size=10))


@fuzz_settings(150)
@given(path=st.sampled_from([f"/api/v1/nodes/{Controller.node_id}/logs",
                             f"/api/v1/nodes/{Controller.node_id}/events",
                             f"/api/v1/nodes/{Controller.node_id}/monitor",
                             "/api/v1/commands", "/api/v1/commands/c-1/logs"]),
       query=st.dictionaries(st.sampled_from(["after", "limit", "source", "state",
                                              "node_id", "topic"]), query_values,
                             max_size=3))
def test_any_query_string_answers_below_500(ctl: Controller, path: str,
                                            query: dict[str, str]) -> None:
    url = f"{path}?{urlencode(query)}" if query else path
    try:
        assert_error_shape(ctl.rest("GET", url))
    except Exception as exc:
        if known_elsewhere(exc) is None:
            raise
