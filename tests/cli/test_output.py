"""`tether exec` / `tether logs` output writing (cli/output.py), without a controller: the
REST API is a small fake that serves stored items the way the controller does."""

from __future__ import annotations

import base64
import io
from typing import Any

from tether.cli.output import EXIT_OUTPUT_DROPPED, OutputWriter, dropped_line, page_has_more


def item(item_id: int, seq: int, data: bytes, source: str = "stdout") -> dict[str, Any]:
    out: dict[str, Any] = {"id": item_id, "source": source, "seq": seq, "dropped": 0}
    try:
        out["data"] = data.decode()
    except UnicodeDecodeError:
        out["data"] = data.decode(errors="replace")
        out["data_b64"] = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    return out


class FakeApi:
    """Serves GET /api/v1/commands/{id}/logs?after= and /api/v1/commands/{id}."""

    def __init__(self, items: list[dict[str, Any]], cmd: dict[str, Any]) -> None:
        self.items, self.cmd = items, cmd

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        if path.endswith("/logs"):
            after = int((params or {}).get("after", 0))
            page = [i for i in self.items if i["id"] > after][:1000]
            return {"items": page, "next_after": page[-1]["id"] if page else after}
        return self.cmd


def writer() -> tuple[OutputWriter, io.BytesIO, io.BytesIO]:
    out, err = io.BytesIO(), io.BytesIO()
    return OutputWriter(out, err), out, err


def test_a_live_item_that_skips_a_seq_is_held_until_the_gap_is_fetched_over_rest() -> None:
    w, out, _ = writer()
    stored = [item(10, 1, b"a\n"), item(11, 2, b"b\n"), item(12, 3, b"c\n")]
    assert w.emit([stored[0]], stop_at_gap=True)
    assert not w.emit([stored[2]], stop_at_gap=True)  # seq 2 was not seen: stop, fetch
    assert out.getvalue() == b"a\n"
    w.catch_up(FakeApi(stored, {"state": "running"}), "c1")  # type: ignore[arg-type]
    assert out.getvalue() == b"a\nb\nc\n"


def test_a_chunk_that_arrives_twice_is_written_once() -> None:
    w, out, _ = writer()
    w.emit([item(10, 1, b"a\n"), item(11, 2, b"b\n"), item(13, 2, b"b\n"),
            item(14, 3, b"c\n")])
    assert out.getvalue() == b"a\nb\nc\n"


def test_bytes_that_are_not_utf8_are_written_exactly_and_notes_go_to_stderr() -> None:
    w, out, err = writer()
    raw = b"\xff\xfe\x00\xc3A\x80\x9f\xed\xa0\x80\n\xf0(\x8c\xbc\x01"
    w.emit([item(1, 1, raw), item(2, 2, b"caf\xc3"), item(3, 3, b"\xa9\n"),
            item(4, 1, b"[tether] note\n", "runtime"), item(5, 1, b"oops\n", "stderr")])
    assert out.getvalue() == raw + "café\n".encode()
    assert err.getvalue() == b"[tether] note\noops\n"


def test_what_the_process_wrote_but_did_not_arrive_is_counted_as_dropped() -> None:
    w, _, _ = writer()
    w.emit([item(1, 1, b"x" * 1000), item(2, 1, b"e" * 10, "stderr")])
    cmd = {"command_id": "c1", "state": "succeeded", "log_dropped_bytes": 0,
           "result": {"stdout_bytes": 5000, "stderr_bytes": 10}}
    assert w.dropped_bytes(cmd) == 4000
    whole = dict(cmd, result={"stdout_bytes": 1000, "stderr_bytes": 10})
    assert w.dropped_bytes(whole) == 0
    # a node that does not report its byte counts: the controller's own count is used
    assert w.dropped_bytes(dict(cmd, result=None, log_dropped_bytes=77)) == 77
    assert "4000 bytes of output were dropped" in dropped_line(4000, "c1")
    assert EXIT_OUTPUT_DROPPED == 3


def test_catch_up_reads_the_command_before_its_logs() -> None:
    """A terminal state read first means its output is already stored (logs are stored
    before a status): reading logs first could miss chunks stored in between."""
    calls: list[str] = []

    class Recording(FakeApi):
        def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
            calls.append("logs" if path.endswith("/logs") else "command")
            return super().get(path, params)

    w, _, _ = writer()
    w.catch_up(Recording([item(1, 1, b"a")], {"state": "succeeded"}), "c1")  # type: ignore[arg-type]
    assert calls[0] == "command"


class BytePagedApi(FakeApi):
    """Serves log pages bounded in bytes, as the controller does: a page stops before
    the chunk that would take it past ``max_bytes``, and says whether more follow."""

    def __init__(self, items: list[dict[str, Any]], cmd: dict[str, Any],
                 max_bytes: int) -> None:
        super().__init__(items, cmd)
        self.max_bytes = max_bytes

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        if not path.endswith("/logs"):
            return self.cmd
        after = int((params or {}).get("after", 0))
        rest = [i for i in self.items if i["id"] > after]
        page: list[dict[str, Any]] = []
        for i in rest:
            if page and sum(len(p["data"]) for p in page) + len(i["data"]) > self.max_bytes:
                break
            page.append(i)
        return {"items": page, "next_after": page[-1]["id"] if page else after,
                "more": len(page) < len(rest)}


def test_catch_up_follows_more_through_short_pages_bounded_in_bytes() -> None:
    """A page of 3 large chunks is short of 1,000 items, yet not the last one."""
    stored = [item(n, n, bytes([97 + n % 26]) * 400_000) for n in range(1, 9)]
    w, out, _ = writer()
    w.catch_up(BytePagedApi(stored, {"state": "succeeded"}, 1 << 20), "c1")  # type: ignore[arg-type]
    assert out.getvalue() == b"".join(bytes([97 + n % 26]) * 400_000 for n in range(1, 9))


def test_a_page_without_more_from_an_older_controller_is_paged_by_count() -> None:
    assert page_has_more({"items": [{}] * 1000})
    assert not page_has_more({"items": [{}] * 999})
    assert not page_has_more({"items": [{}] * 1000, "more": False})
    assert page_has_more({"items": [{}], "more": True})
