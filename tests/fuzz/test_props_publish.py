"""Fuzz the node runtime's loopback ``POST /publish`` (a local app's monitor packet), the
one body the node reads from a peer it does not authenticate, through its real Starlette
app with a stand-in runtime.

Every body answers 202 or a 4xx with the JSON error shape, never 5xx; what reaches the
runtime is a topic of 1-128 characters and a map.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.node.health import health_app

from .asgi import assert_error_shape
from .strategies import deep_json, fuzz_settings, json_text, json_values
from .targets_asgi import known_elsewhere

with warnings.catch_warnings():  # starlette asks for httpx2, which this project does not use
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


class StandInRuntime:
    """What ``health_app`` uses of a NodeRuntime: ``publish_monitor`` records packets."""

    def __init__(self) -> None:
        self.published: list[tuple[Any, Any]] = []

    def publish_monitor(self, topic: str, data: dict[str, Any]) -> int:
        self.published.append((topic, data))
        return len(self.published)


@pytest.fixture(scope="module")
def publish() -> Iterator[tuple[TestClient, StandInRuntime]]:
    runtime = StandInRuntime()
    with TestClient(health_app(runtime),  # type: ignore[arg-type]
                    raise_server_exceptions=True) as client:
        yield client, runtime


def post(publish: tuple[TestClient, StandInRuntime], body: bytes) -> None:
    client, runtime = publish
    before = len(runtime.published)
    try:
        resp = client.post("/publish", content=body,
                           headers={"content-type": "application/json"})
    except Exception as exc:
        if known_elsewhere(exc) is None:
            raise
        return
    assert_error_shape(resp)
    if resp.status_code == 202:
        topic, data = runtime.published[-1]
        assert isinstance(topic, str) and 0 < len(topic) <= 128
        assert isinstance(data, dict)
    else:
        assert len(runtime.published) == before


@fuzz_settings(200)
@given(body=st.fixed_dictionaries({}, optional={
    "topic": st.text(max_size=130) | json_text | json_values,
    "data": st.dictionaries(json_text, json_values, max_size=4) | json_values})
    | json_values)
def test_any_json_publish_body_answers_202_or_a_4xx_never_500(
        publish: tuple[TestClient, StandInRuntime], body: Any) -> None:
    post(publish, json.dumps(body).encode())


@fuzz_settings(60)
@given(raw=st.binary(max_size=200) | deep_json)
def test_any_publish_bytes_answer_202_or_a_4xx_never_500(
        publish: tuple[TestClient, StandInRuntime], raw: bytes) -> None:
    post(publish, raw)
