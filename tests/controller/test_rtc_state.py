"""The rtc relay's memory, sans I/O (controller/services/rtc_state.py): the token bucket,
a client's peers, a node session's routes and grants, and the relay window."""

from __future__ import annotations

import pytest

from tether.controller.services.rtc_state import (
    MAX_CLIENT_ROUTES,
    MAX_GRANTS,
    RELAY_INITIAL_WINDOW,
    ClientPeers,
    RelayWindow,
    SessionRoutes,
    TokenBucket,
)
from tether.protocol.rtc import RtcAnswer, RtcClose, RtcIce, RtcLink, RtcOffer, RtcRelay

CLIENT = "client:abc"


def offer(node: str = "n-1", psid: str = "p-1", **route: str | None) -> RtcOffer:
    return RtcOffer(node_id=node, peer_session_id=psid, negotiation_id=1,
                    from_=route.get("from_"), to=route.get("to"), sdp="v=0")


def answer(node: str = "n-1", psid: str = "p-1", **route: str | None) -> RtcAnswer:
    return RtcAnswer(node_id=node, peer_session_id=psid, negotiation_id=1,
                     from_=route.get("from_"), to=route.get("to"), sdp="v=0")


def close(node: str = "n-1", psid: str = "p-1", **route: str | None) -> RtcClose:
    return RtcClose(node_id=node, peer_session_id=psid, negotiation_id=1,
                    from_=route.get("from_"), to=route.get("to"))


def relay(seq: int, size: int, *, to: str | None = None, from_: str | None = "node:a",
          ack: int | None = None, window: int | None = None) -> RtcRelay:
    return RtcRelay(node_id="b", peer_session_id="lk", from_=from_, to=to, seq=seq,
                    data=b"x" * size, ack=ack, window=window)


def test_the_bucket_allows_its_burst_then_its_rate_and_a_clock_going_back_adds_nothing(
        ) -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=3.0, now_s=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(50.0)  # back in time: no tokens from it
    assert [bucket.take(100.25) for _ in range(3)] == [True, True, False]  # 2.5 tokens
    assert [bucket.take(1e9) for _ in range(4)] == [True, True, True, False]  # capped


def test_a_client_opens_peers_only_with_an_offer_and_at_most_its_quota() -> None:
    client = ClientPeers(address=CLIENT, bucket=TokenBucket(1, 1, 0), max_peers=2)
    assert client.admit(answer()) == ("rtc_unknown_peer", client.admit(answer())[1])  # type: ignore[index]
    assert client.admit(offer()) is None and client.opened(offer())
    assert client.admit(answer()) is None and not client.opened(answer())
    assert client.admit(offer(node="n-2"))[0] == "forbidden"  # type: ignore[index]
    client.opened(offer(psid="p-2"))
    assert client.admit(offer(psid="p-3"))[0] == "quota_exceeded"  # type: ignore[index]
    client.opened(close())
    assert set(client.peers) == {"p-2"}
    assert client.admit(offer(psid="p-3")) is None


def test_a_client_accepts_only_frames_of_its_own_peers_from_their_node() -> None:
    client = ClientPeers(address=CLIENT, bucket=TokenBucket(1, 1, 0))
    client.opened(offer())
    assert client.accepts(answer(from_="node:n-1"))
    assert not client.accepts(answer(psid="p-9", from_="node:n-1"))
    assert not client.accepts(answer(node="n-2", from_="node:n-2"))
    assert not client.accepts(answer(from_="node:n-2"))  # from must be the node end
    assert client.accepts(close(from_="node:n-1"))
    assert not client.accepts(answer(from_="node:n-1"))  # the close ended the peer


def test_a_node_may_answer_a_client_only_for_a_peer_that_client_opened_with_it() -> None:
    routes = SessionRoutes()
    assert routes.may_send("n-1", answer(to=CLIENT), 0) is not None
    assert routes.delivering(offer(from_=CLIENT), 0)
    assert routes.may_send("n-1", answer(to=CLIENT), 0) is None
    assert routes.may_send("n-1", answer(psid="p-2", to=CLIENT), 0) is not None
    assert routes.may_send("n-1", answer(to="client:other"), 0) is not None
    # the node end is the sender itself: it cannot speak for another node's peer
    assert "node_id" in (routes.may_send("n-1", answer(node="n-2", to=CLIENT), 0) or "")
    assert routes.may_send("n-1", close(to=CLIENT), 0) is None
    assert routes.may_send("n-1", answer(to=CLIENT), 0) is not None  # closed by the node
    routes.delivering(offer(from_=CLIENT), 0)
    routes.delivering(close(from_=CLIENT), 0)
    assert routes.may_send("n-1", answer(to=CLIENT), 0) is not None  # closed by the client


def test_a_session_remembers_a_bounded_number_of_client_routes_and_grants() -> None:
    routes = SessionRoutes()
    for i in range(MAX_CLIENT_ROUTES + 5):
        routes.delivering(offer(psid=f"p-{i}", from_=CLIENT), 0)
    for i in range(MAX_GRANTS + 5):
        routes.delivering(RtcLink(node_id="b", peer_session_id=f"lk-{i}", from_="node:a",
                                  expires_at_ms=10), 0)
    assert len(routes.clients) == MAX_CLIENT_ROUTES and len(routes.grants) == MAX_GRANTS
    assert routes.may_send("n-1", answer(psid="p-0", to=CLIENT), 0) is not None  # oldest gone
    assert routes.may_send("n-1", answer(psid=f"p-{MAX_CLIENT_ROUTES + 4}", to=CLIENT),
                           0) is None


def test_two_nodes_may_signal_only_under_a_live_grant_naming_both() -> None:
    routes = SessionRoutes()  # node a's session
    ice = RtcIce(node_id="b", peer_session_id="lk", negotiation_id=1, from_=None,
                 to="node:b", candidate="")
    assert routes.may_send("a", ice, 0) is not None  # no grant
    routes.delivering(RtcLink(node_id="b", peer_session_id="lk", from_="node:b",
                              expires_at_ms=1000), 0)
    assert routes.may_send("a", offer(node="b", psid="lk", to="node:c"), 0) is not None
    assert routes.may_send("a", offer(node="a", psid="lk", to="node:b"), 0) is not None
    assert routes.may_send("a", offer(node="b", psid="other", to="node:b"), 0) is not None
    assert routes.may_send("a", relay(1, 10, to="client:x", from_=None), 0) is not None
    assert routes.may_send("a", offer(node="b", psid="lk", to="node:b"), 999) is None
    # used before it lapsed: it lasts past expires_at_ms, until a close
    assert routes.may_send("a", ice, 10**9) is None
    assert routes.may_send("a", close(node="b", psid="lk", to="node:b"), 10**9) is None
    assert routes.may_send("a", ice, 10**9) is not None


def test_a_grant_not_used_before_it_expires_lapses() -> None:
    routes = SessionRoutes()
    routes.delivering(RtcLink(node_id="b", peer_session_id="lk", from_="node:b",
                              expires_at_ms=1000), 0)
    assert routes.may_send("a", offer(node="b", psid="lk", to="node:b"), 1000) is not None
    assert "lk" not in routes.grants


def test_the_relay_window_delivers_in_order_within_the_receivers_window() -> None:
    window = RelayWindow(cap=1 << 20, max_frames=4)
    assert window.admit(1, RELAY_INITIAL_WINDOW + 1)  # one frame always fits
    assert not window.admit(2, 1)  # past the window: dropped
    assert not window.admit(3, 1)  # a gap: dropped
    assert window.admit(1, RELAY_INITIAL_WINDOW + 1)  # a re-send passes, counted once
    assert window.in_flight == RELAY_INITIAL_WINDOW + 1
    window.on_ack(1, 1000)
    assert window.in_flight == 0 and window.acked == 1
    assert window.admit(2, 600) and not window.admit(3, 600)  # 1200 > 1000
    assert window.admit(3, 400)
    window.on_ack(99, 10**12)  # beyond what was delivered: as far as that; window capped
    assert (window.acked, window.in_flight, window.window) == (3, 0, 1 << 20)
    assert all(window.admit(s, 1) for s in range(4, 8)) and not window.admit(8, 1)  # frames
    window.on_ack(2, 10)  # stale: nothing moves back
    assert window.acked == 3


@pytest.mark.parametrize("seq", [0, 3])
def test_relay_data_to_a_node_needs_the_grant_from_that_peer(seq: int) -> None:
    routes = SessionRoutes()  # node b's session
    assert not routes.delivering(relay(1, 10), 0)
    routes.delivering(RtcLink(node_id="b", peer_session_id="lk", from_="node:a",
                              expires_at_ms=10), 0)
    assert not routes.delivering(relay(1, 10, from_="node:c"), 0)
    assert routes.delivering(relay(1, 10), 0)
    # an ack alone passes; data out of order (a gap) is dropped
    assert routes.delivering(relay(seq, 10 if seq else 0), 0) is (seq == 0)
    routes.relay_acked(relay(0, 0, to="node:a", from_=None, ack=1, window=50))
    grant = routes.grants["lk"]
    assert grant.relay_in is not None and grant.relay_in.acked == 1
