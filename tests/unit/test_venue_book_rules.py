"""The book rules of Bybit, Coinbase, Kraken and Hyperliquid on crafted frames (no connection: a resync is
counted by the keeper and the book waits for a snapshot). The frames are written by the venues' encoders,
as their replicas write them; tests/e2e/test_venue_books.py runs the same rules against the replicas."""

from __future__ import annotations

from deltafeed.books import BookKeeper
from deltafeed.venues.bybit import BybitSettings
from deltafeed.venues.bybit import codec as bybit
from deltafeed.venues.bybit.book import BybitBookFeed
from deltafeed.venues.coinbase import CoinbaseSettings
from deltafeed.venues.coinbase import codec as coinbase
from deltafeed.venues.coinbase.book import CoinbaseBookFeed
from deltafeed.venues.hyperliquid import HyperliquidSettings
from deltafeed.venues.hyperliquid import codec as hl
from deltafeed.venues.hyperliquid.book import HyperliquidBookFeed
from deltafeed.venues.kraken import KrakenSettings
from deltafeed.venues.kraken import codec as kraken
from deltafeed.venues.kraken import samples as kraken_samples
from deltafeed.venues.kraken.book import KrakenBookFeed, checksum


def _bybit(snapshot: bool, u: int, bids: list[tuple[str, str]], seq: int = 0) -> bytes:
    return bybit.book_message("BTCUSDT", 50, snapshot, 1, 1, bids, [("101", "1")] if snapshot else [], u, seq or u)


def test_bybit_u_must_step_by_one() -> None:
    k = BookKeeper("bybit:BTCUSDT", 50)
    f = BybitBookFeed(BybitSettings(), {"BTCUSDT": k})
    f.on_frame("spot", _bybit(False, 4, [("100", "1")]))
    assert not k.in_sync and f.ignored["before_snapshot"] == 1
    f.on_frame("spot", _bybit(True, 5, [("100", "1")]))
    f.on_frame("spot", _bybit(False, 6, [("100", "2")]))
    f.on_frame("spot", _bybit(False, 6, [("100", "2")]))  # a copy: skipped
    assert k.in_sync and k.view(1)["bids"] == [[100.0, 2.0]] and k.venue_seq == 6 and f.ignored["duplicate"] == 1
    f.on_frame("spot", _bybit(False, 8, [("100", "3")]))  # 7 was lost
    assert not k.in_sync and k.resyncs == {"gap": 1} and k.view(1)["bids"] == []
    f.on_frame("spot", _bybit(False, 9, [("100", "4")]))  # still waiting for a snapshot
    f.on_frame("spot", _bybit(True, 1, [("99", "1")], seq=20))  # Bybit's u = 1 after a restart: a reset
    f.on_frame("spot", _bybit(False, 2, [("98", "1")], seq=21))
    assert k.in_sync and k.view(2)["bids"] == [[99.0, 1.0], [98.0, 1.0]] and k.venue_seq == 21
    f.on_frame("spot", _bybit(False, 3, [("98", "NaN")]))  # unusable: the book breaks
    assert not k.in_sync and k.resyncs["malformed"] == 1


def _coinbase(seq: int, kind: str, bids: list[tuple[str, str]], product: str = "BTC-USD") -> bytes:
    ev = coinbase.l2_event(kind, product, 1_000, bids, [("101", "1")] if kind == "snapshot" else [])
    return coinbase.envelope_us("l2_data", seq, 1_700_000_000_000_000 + seq, b"[%s]" % ev)


def test_coinbase_a_sequence_jump_resyncs_every_book_of_the_connection() -> None:
    k1, k2 = BookKeeper("coinbase:BTC-USD", 50), BookKeeper("coinbase:ETH-USD", 50)
    f = CoinbaseBookFeed(CoinbaseSettings(), {"BTC-USD": k1, "ETH-USD": k2})
    f.on_frame("ws", _coinbase(0, "snapshot", [("100", "1")]))
    f.on_frame("ws", _coinbase(1, "snapshot", [("10", "1")], "ETH-USD"))
    f.on_frame("ws", _coinbase(2, "update", [("100", "0"), ("99", "2")]))
    f.on_frame("ws", _coinbase(2, "update", [("98", "2")]))  # the same number again: skipped whole
    assert k1.view(2)["bids"] == [[99.0, 2.0]] and k1.venue_seq == 1_700_000_000_000_002
    assert f.ignored["late_or_copy"] == 1
    f.on_frame("ws", _coinbase(4, "update", [("97", "1")]))  # 3 was lost, whichever product it held
    assert not k1.in_sync and not k2.in_sync and k1.resyncs == k2.resyncs == {"gap": 1}
    f.on_frame("ws", _coinbase(5, "update", [("96", "1")]))
    assert f.ignored["before_snapshot"] == 2  # the update in frame 4 itself, and this one
    f.on_frame("ws", _coinbase(6, "snapshot", [("95", "1")]))
    assert k1.in_sync and k1.view(5)["bids"] == [[95.0, 1.0]] and not k2.in_sync


def test_kraken_a_message_failing_its_checksum_never_reaches_the_served_book() -> None:
    k = BookKeeper("kraken:BTC/USD", 10)
    f = KrakenBookFeed(KrakenSettings(), {"BTC/USD": k})
    f.precisions = {"BTC/USD": (1, 8)}  # the guide's pair
    f.on_frame("v2", kraken_samples.DOC_BOOK_SNAPSHOT)
    assert k.in_sync and k.view(1)["asks"] == [[45285.2, 0.001]]
    before = k.view(10)
    bad = kraken.book_message("BTC/USD", False, [("45283.5", "0.20000000")], [], 12345, 1_700_000_000_000_001)
    f.on_frame("v2", bad)
    assert not k.in_sync and k.resyncs == {"checksum": 1} and f.checksum_failures == 1
    f.on_frame("v2", kraken_samples.DOC_BOOK_SNAPSHOT)  # the fresh snapshot
    assert k.in_sync and k.view(10)["bids"] == before["bids"]
    # The same change with the right checksum is applied, and applying it twice changes nothing.
    f.books["BTC/USD"].update([(45283.5, 0.2)], [])
    crc = checksum(f.books["BTC/USD"], 1, 8)
    f.books["BTC/USD"].update([(45283.5, 0.1)], [])
    good = kraken.book_message("BTC/USD", False, [("45283.5", "0.20000000")], [], crc, 1_700_000_000_000_002)
    f.on_frame("v2", good)
    f.on_frame("v2", good)
    assert k.in_sync and k.view(1)["bids"] == [[45283.5, 0.2]] and k.venue_seq == 1_700_000_000_000_002


def test_hyperliquid_takes_only_later_snapshots() -> None:
    k = BookKeeper("hyperliquid:BTC", 20)
    f = HyperliquidBookFeed(HyperliquidSettings(), {"BTC": k})

    def frame(t: int, bid: str) -> bytes:
        return hl.book_frame("BTC", t, [(bid, "1", 1)], [("101", "1", 1)])

    f.on_frame("ws", frame(5, "100"))
    f.on_frame("ws", frame(5, "99"))  # a copy
    f.on_frame("ws", frame(4, "98"))  # late or stale
    assert k.in_sync and k.venue_seq == 5 and k.view(1)["bids"] == [[100.0, 1.0]]
    assert f.ignored["not_newer"] == 2
    f.on_frame("ws", frame(6, "97"))
    assert k.view(2)["bids"] == [[97.0, 1.0]] and k.venue_seq == 6
    f.on_frame("ws", frame(7, "NaN"))
    assert not k.in_sync and k.resyncs == {"malformed": 1}


def test_a_refused_subscription_is_one_error_line_and_counted() -> None:
    f = BybitBookFeed(BybitSettings(), {"BTCUSDT": BookKeeper("bybit:BTCUSDT", 50)})
    refusal = b'{"success":false,"ret_msg":"Invalid symbol :[orderbook.50.BTCUSDT]","conn_id":"x","op":"subscribe"}'
    f.on_frame("spot", refusal)
    f.on_frame("spot", refusal)
    h = HyperliquidBookFeed(HyperliquidSettings(), {"BTC": BookKeeper("hyperliquid:BTC", 20)})
    h.on_frame(
        "ws", b'{"channel":"error","data":"Invalid subscription {\\"type\\":\\"l2Book\\",\\"coin\\":\\"BTC\\"}"}'
    )
    assert f.status()["refusals"] == {"Invalid symbol :[orderbook.50.BTCUSDT]": 2}
    assert list(h.status()["refusals"]) == ['Invalid subscription {"type":"l2Book","coin":"BTC"}']
