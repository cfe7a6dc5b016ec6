"""A serving node's books from published book messages (deltafeed.cluster.node.ClusterView.on_book):
a delta is applied only onto the state it follows, from the same publisher; anything else takes the
book out of sync (no levels) until the next snapshot; a periodic snapshot of the state held changes
nothing; ``lost`` counts only from the book's own publisher; a silent publisher's book goes out of
sync; unreadable messages are refused by the decoder."""

from __future__ import annotations

import msgspec
import pytest

from deltafeed.cluster import node, subjects
from deltafeed.cluster.node import ClusterView
from deltafeed.config import Settings

BTC = "binance:BTCUSDT"


def msg(kind: str, seq: int, prev: int = 0, bids: list[tuple[float, float]] | None = None, source: str = "a#1",
        asks: list[tuple[float, float]] | None = None) -> subjects.BookUpdate:  # fmt: skip
    return subjects.BookUpdate(BTC, kind, seq, prev, 3, 1000 + seq, 5000 + seq, bids or [], asks or [], source, 1)


def top(view: ClusterView) -> dict[str, object]:
    return view.books.keepers[BTC].view()


def test_deltas_chain_on_their_publishers_states() -> None:
    view = ClusterView(Settings(), "c", None)
    view.on_book(msg("snapshot", 5, bids=[(10.0, 1.0), (9.0, 2.0)], asks=[(11.0, 1.0)]))
    assert top(view)["in_sync"] and top(view)["bids"] == [[10.0, 1.0], [9.0, 2.0]]
    view.on_book(msg("delta", 7, prev=5, bids=[(10.0, 0.0), (9.5, 4.0)]))
    doc = top(view)
    assert doc["bids"] == [[9.5, 4.0], [9.0, 2.0]] and doc["venue_seq"] == 1007 and doc["time"] == 5007
    view.on_book(msg("delta", 7, prev=5, bids=[(9.5, 0.0)]))  # a repeat: already held
    assert top(view)["bids"] == [[9.5, 4.0], [9.0, 2.0]] and top(view)["in_sync"]

    # The periodic snapshot of the state held is a heartbeat: no new state for the consumers.
    seq = view.books.keepers[BTC].sequence
    view.on_book(msg("snapshot", 7, bids=[(9.5, 4.0), (9.0, 2.0)], asks=[(11.0, 1.0)]))
    assert view.books.keepers[BTC].sequence == seq

    # A delta after a state not held (a message lost on the way): out of sync, no levels.
    view.on_book(msg("delta", 12, prev=10, bids=[(8.0, 1.0)]))
    assert not top(view)["in_sync"] and top(view)["bids"] == []
    view.on_book(msg("delta", 13, prev=12, bids=[(8.5, 1.0)]))  # still nothing to chain onto
    assert not top(view)["in_sync"]
    view.on_book(msg("snapshot", 13, bids=[(9.0, 1.0)], asks=[(11.0, 2.0)]))
    assert top(view)["in_sync"] and top(view)["bids"] == [[9.0, 1.0]]
    assert view.books.keepers[BTC].resyncs == {"gap": 1}


def test_another_publisher_takes_over_and_the_old_ones_lost_is_ignored() -> None:
    view = ClusterView(Settings(), "c", None)
    view.on_book(msg("snapshot", 40, bids=[(10.0, 1.0)], asks=[(11.0, 1.0)], source="old#1"))
    # A new engine's book (its own numbering from 1) replaces it; its deltas never chain onto the old one's.
    view.on_book(msg("snapshot", 1, bids=[(10.0, 2.0)], asks=[(11.0, 1.0)], source="new#1"))
    view.on_book(msg("delta", 41, prev=40, bids=[(7.0, 1.0)], source="old#1"))  # late, from the old one
    assert not top(view)["in_sync"]
    view.on_book(msg("snapshot", 2, bids=[(10.0, 3.0)], asks=[(11.0, 1.0)], source="new#1"))
    view.on_book(msg("lost", 41, source="old#1"))  # the old engine stopping says nothing of the new one's
    assert top(view)["in_sync"] and top(view)["bids"] == [[10.0, 3.0]]
    view.on_book(msg("lost", 3, source="new#1"))
    assert not top(view)["in_sync"] and top(view)["bids"] == []


def test_a_silent_publishers_book_goes_out_of_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    view = ClusterView(Settings(), "c", None)
    view.on_book(msg("snapshot", 1, bids=[(10.0, 1.0)], asks=[(11.0, 1.0)]))
    view.check_books()
    assert top(view)["in_sync"]
    now = node.time.monotonic()
    monkeypatch.setattr(node.time, "monotonic", lambda: now + node.BOOK_SILENT_S + 0.1)  # the clock only
    view.check_books()
    assert not top(view)["in_sync"] and view.books.keepers[BTC].resyncs == {"silent": 1}


@pytest.mark.parametrize(
    "change",
    [{"kind": "moved"}, {"depth": 0}, {"bids": [[float("nan"), 1.0]]}, {"asks": [[10.0, -1.0]]}, {"sequence": "x"}],
)
def test_unreadable_book_messages_are_refused(change: dict[str, object]) -> None:
    good = msgspec.to_builtins(msg("delta", 2, prev=1, bids=[(10.0, 1.0)]))
    assert subjects.decode_book(msgspec.json.encode(good)).bids == [(10.0, 1.0)]
    with pytest.raises(ValueError, match="not a book message"):
        subjects.decode_book(msgspec.json.encode({**good, **change}))
