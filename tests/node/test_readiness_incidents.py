"""Node readiness classes each close code's incident as ERROR_TABLE says."""

from __future__ import annotations

import pytest

from tether.node.readiness import incident_class
from tether.protocol.errors import CLOSE_TABLE, CloseCode, CloseSpec, Incident, Reaction


@pytest.mark.parametrize("close_code", sorted(CLOSE_TABLE))
def test_readiness_classes_every_close_code_as_the_table_does(close_code: CloseCode) -> None:
    assert incident_class(int(close_code)) == CLOSE_TABLE[close_code].incident.value


def test_the_classes_readiness_gave_before_the_table_are_unchanged() -> None:
    classes = {code: incident_class(code) for code in (None, *CLOSE_TABLE, 1012)}
    assert {c for c, k in classes.items() if k == "auth"} == {4401, 4403}
    assert {c for c, k in classes.items() if k == "protocol"} == {4400, 1009, 4426}
    assert classes[None] == classes[1012] == classes[4409] == "transport"


def test_an_incident_class_is_a_plain_string_for_the_status_file() -> None:
    assert type(incident_class(4401)) is str


def test_changing_the_table_changes_the_incident_class(monkeypatch: pytest.MonkeyPatch) -> None:
    assert incident_class(4408) == "transport"
    monkeypatch.setitem(CLOSE_TABLE, CloseCode.TIMEOUT,
                        CloseSpec("timeout", Reaction.BACKOFF, Incident.PROTOCOL))
    assert incident_class(4408) == "protocol"
