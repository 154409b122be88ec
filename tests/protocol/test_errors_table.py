"""The one error table (protocol/errors.py): every error code has a close code, an HTTP
status and a reaction; every close code of PROTOCOL.md §7 is in it with the reaction §7
names; docs/protocol.md shows it as it is; and no module writes a close code as a number."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tether.protocol.errors import (
    CLOSE_TABLE,
    ERROR_TABLE,
    UNKNOWN_CLOSE,
    CloseCode,
    Incident,
    Reaction,
    close_code_for,
    close_spec,
    error_table_markdown,
    http_status_for,
    incident_for_close,
    reaction_for_close,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"

# --- the table -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_error_code_has_a_close_code_an_http_status_and_a_reaction(code: str) -> None:
    spec = ERROR_TABLE[code]
    assert isinstance(spec.close_code, CloseCode)
    assert 400 <= spec.http_status <= 599
    assert isinstance(spec.reaction, Reaction)
    assert isinstance(spec.incident, Incident)
    assert close_code_for(code) == spec.close_code
    assert http_status_for(code) == spec.http_status


def test_every_close_code_has_a_reaction_and_at_least_one_error_code() -> None:
    assert set(CLOSE_TABLE) == set(CloseCode)
    used = {spec.close_code for spec in ERROR_TABLE.values()}
    assert used == set(CloseCode)


def test_an_error_code_reacts_as_its_close_code_does() -> None:
    """Rule 1: the peer sees only the close code."""
    for code, spec in ERROR_TABLE.items():
        assert spec.reaction is reaction_for_close(spec.close_code), code
        assert spec.incident is incident_for_close(spec.close_code), code


def test_the_codes_once_missing_from_the_table_are_in_it() -> None:
    assert close_code_for("normal_closure") == 1000
    assert close_code_for("going_away") == 1001
    assert close_code_for("pin_mismatch") == 4995
    assert close_code_for("method_not_allowed") == 4400
    assert http_status_for("method_not_allowed") == 405


@pytest.mark.parametrize("close_code", [None, 1002, 1012, 3000, 4000, 4999])
def test_a_close_code_nobody_tabled_gets_the_ordinary_backoff_as_transport_trouble(
        close_code: int | None) -> None:
    assert close_spec(close_code) is UNKNOWN_CLOSE
    assert reaction_for_close(close_code) is Reaction.BACKOFF
    assert incident_for_close(close_code) is Incident.TRANSPORT


def test_a_close_code_is_looked_up_from_a_plain_integer() -> None:
    assert reaction_for_close(4409) is Reaction.STOP
    assert close_spec(4429) is CLOSE_TABLE[CloseCode.RATE_LIMITED]


# --- PROTOCOL.md §7 ------------------------------------------------------------------------


def section_7_rows(text: str) -> dict[int, str]:
    """{close code: the node's reaction} from the §7 table of ``text``."""
    start = text.index("| code | meaning | node's reaction |")
    rows: dict[int, str] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[int(cells[0])] = cells[2]
    return rows


def reaction_named(words: str) -> Reaction | None:
    """The Reaction §7's words name; None for "none" (nothing constrains the redial)."""
    if words == "none":
        return None
    if "stop" in words or "do not reconnect" in words:
        return Reaction.STOP
    if "maximum" in words:
        return Reaction.BACKOFF_MAX
    if "retry_after" in words:
        return Reaction.RETRY_AFTER
    assert "reconnect" in words, words
    return Reaction.BACKOFF


QUOTED = section_7_rows(DOC.read_text())


def test_the_quote_of_section_7_names_its_ten_close_codes() -> None:
    assert sorted(QUOTED) == [1000, 1001, 1009, 4400, 4401, 4403, 4408, 4409, 4426, 4429]


@pytest.mark.parametrize(("close_code", "words"), sorted(QUOTED.items()))
def test_every_close_code_of_section_7_is_tabled_with_the_reaction_it_names(
        close_code: int, words: str) -> None:
    assert close_code in CLOSE_TABLE
    named = reaction_named(words)
    if named is not None:
        assert reaction_for_close(close_code) is named


# --- docs/protocol.md ----------------------------------------------------------------------


def test_the_docs_show_the_table_as_it_is() -> None:
    doc = DOC.read_text()
    found = re.search(r"<!-- error-table:begin -->\n(.*?)\n<!-- error-table:end -->", doc,
                      re.DOTALL)
    assert found is not None, "docs/protocol.md §7 lost its error-table markers"
    assert found.group(1) == error_table_markdown(), (
        "docs/protocol.md §7 differs from ERROR_TABLE: paste the output of "
        "python -c 'from tether.protocol.errors import error_table_markdown as m; print(m())'")


def test_the_markdown_has_a_row_for_every_code() -> None:
    text = error_table_markdown()
    for code, spec in ERROR_TABLE.items():
        assert f"| `{code}` | {int(spec.close_code)} | {spec.http_status} |" in text
    for close in CloseCode:
        assert f"| {int(close)} | `{close.name}` |" in text


# --- no bare close codes -------------------------------------------------------------------

SCANNED = ("controller", "sidecar", "node", "tools", "cli")
CLOSE_CALLS = {"close", "_Close", "WsClose", "_LocalClose", "_close_ws", "LinkStopped"}
STATUS_CALLS = {"error_response", "JSONResponse", "Response"}


def is_close_code(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and type(node.value) is int
            and (1000 <= node.value <= 1015 or 4000 <= node.value <= 4999))


def is_error_status(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and 400 <= node.value <= 599


def callee(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def mentions_code(node: ast.AST, words: tuple[str, ...] = ("code",)) -> bool:
    """Whether a name or attribute in ``node`` contains one of ``words``."""
    names = [n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node)
             if isinstance(n, ast.Name | ast.Attribute)]
    return any(w in name.lower() for name in names for w in words)


def bare_codes(source: str) -> list[int]:
    """Line numbers where a close code (or, for REST, an error status) is a bare number:
    an argument of a close, a side of a comparison with a ``*code*`` name, in a value given
    to a ``*code*`` or ``*close*`` name, or the status of an error response."""
    lines: list[int] = []
    for node in ast.walk(ast.parse(source)):
        suspects: list[ast.AST] = []
        if isinstance(node, ast.Call) and callee(node) in CLOSE_CALLS:
            suspects = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node, ast.Compare) and mentions_code(node):
            suspects = [n for side in (node.left, *node.comparators) for n in ast.walk(side)]
        elif isinstance(node, ast.Assign) and any(mentions_code(t, ("code", "close"))
                                                  for t in node.targets):
            suspects = list(ast.walk(node.value))
        if any(is_close_code(s) for s in suspects):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and callee(node) in STATUS_CALLS:
            statuses = [*node.args[:1], *(k.value for k in node.keywords
                                          if k.arg == "status_code")]
            if any(is_error_status(s) for s in statuses):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("snippet", [
    'await ws.close(4400, "x")',
    'raise _Close(1009, "x")',
    "raise _LocalClose(code=4408, reason='x')",
    "if close.code == 4409: pass",
    "if code in (4401, PIN): pass",
    "code, reason = 1000, 'bye'",
    "code, reason = (a, b) if ok else (1011, '')",
    "FINAL_CODES = {4403: 'node disabled'}",
    "CLOSE_HINTS = {4401: 'enroll it'}",
    'return error_response(500, "internal", "x")',
    'return JSONResponse({}, status_code=404)',
])
def test_the_scan_finds_a_bare_close_code_or_error_status(snippet: str) -> None:
    assert bare_codes(snippet) == [1]


@pytest.mark.parametrize("snippet", [
    'await ws.close(CloseCode.PROTOCOL_ERROR, "x")',
    "max_prehello_per_address: int = 4096",
    "limit = 1000",
    "return JSONResponse(view, status_code=202)",
])
def test_the_scan_passes_named_codes_and_unrelated_numbers(snippet: str) -> None:
    assert bare_codes(snippet) == []


def test_no_module_writes_a_close_code_or_an_error_status_as_a_bare_number() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}"
             for package in SCANNED for path in sorted((ROOT / package).rglob("*.py"))
             for line in bare_codes(path.read_text())]
    assert found == [], "use CloseCode / close_code_for / http_status_for from protocol.errors"
