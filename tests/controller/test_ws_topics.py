"""/ws topic names are bounded and their id parts validated (issue 11 item 3). Pure."""

from __future__ import annotations

import pytest

from tether.controller.browser import MAX_TOPICS, _subscribe_error, topic_error


@pytest.mark.parametrize("topic", [
    "nodes", "node:n-1", "commands:edge-7", "monitor:a", "command:c_0123abcd", "logs:c_ff",
    "rollouts", "rollout:r_0123abcd"])
def test_known_topics_with_valid_ids_are_accepted(topic: str) -> None:
    assert topic_error(topic) is None


@pytest.mark.parametrize("topic", [
    "node:" + "a" * 100_000, "logs:" + "c" * 200, "node:UPPER", "node:", "monitor:../x",
    "command:a b", "logs:\x00", "bogus", "nodes:extra", 7, None, ["nodes"],
    "rollout:", "rollout:r 1", "rollout:" + "r" * 200, "rollouts:x"])
def test_long_unknown_or_malformed_topics_are_refused_with_a_reason(topic: object) -> None:
    why = topic_error(topic)
    assert why is not None and len(why) < 200


def test_a_subscribe_with_a_huge_topic_list_is_refused_before_it_is_looked_at() -> None:
    error = _subscribe_error(["nodes"] * 1_000_000, set())
    assert error is not None and error[0] == "too_many_topics"
    held = {f"node:n{i}" for i in range(MAX_TOPICS)}
    error = _subscribe_error(["node:another"], held)
    assert error is not None and error[0] == "too_many_topics"
    assert _subscribe_error(["node:n1"], held) is None  # already held: no more topics
