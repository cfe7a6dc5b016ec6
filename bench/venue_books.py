"""Book messages per second through each venue's decoder, sequencing rule and keeper, on one core.

For Bybit (``orderbook.50``), Coinbase (``level2``, the whole book), Kraken (``book`` depth 10 with its
CRC32 check) and Hyperliquid (``l2Book``, 20-level snapshots), a simulated book
(:class:`~deltafeed.replicas.books.SimBook`) takes ``--steps`` random-walk steps and each step is written
as the venue's replica writes it; the timed part is the venue's book feed taking those frames one by
one (``on_frame``: decode, the rule, the keeper), in this process, without sockets. Prints, per venue,
the median of ``--runs`` runs: messages/s, changed levels/s, and microseconds per message.

    python bench/venue_books.py --steps 20000 --runs 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Iterator

from deltafeed.books import BookKeeper
from deltafeed.replicas.books import SimBook
from deltafeed.replicas.bookviews import Side, View, top
from deltafeed.replicas.sim import SymbolSpec
from deltafeed.venues.bookfeed import WsBookFeed
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
from deltafeed.venues.kraken.book import KrakenBookFeed
from deltafeed.venues.kraken.replica import KrakenBook

T0 = 1_796_600_000_000


def _walk(steps: int, seed: int) -> list[tuple[int, bool]]:
    rng = random.Random(seed)
    ticks, out = 6_000_000, []
    for _ in range(steps):
        ticks += rng.choice((-2, -1, -1, 0, 1, 1, 2))
        out.append((ticks, rng.random() < 0.5))
    return out


SPEC = SymbolSpec.for_symbol("BTCUSDT")


def _book() -> SimBook:
    return SimBook(SPEC, 6_000_000, False, 1)


def _view_changes(book: SimBook, v: View, steps: int) -> Iterator[tuple[int, tuple[Side, Side]]]:
    """(step, the view's changed levels) for each step of the walk that changed the view."""
    for i, (t, m) in enumerate(_walk(steps, 1)):
        book.step(t, m)
        book.events.clear()
        ch = v.advance()
        if ch is not None:
            yield i, ch


def bybit_frames(steps: int) -> tuple[list[bytes], int]:
    book, n = _book(), 0
    v = View(book, 50)
    out = [bybit.book_message("BTCUSDT", 50, True, T0, T0, v.texts(v.bids, True), v.texts(v.asks, False), 1, book.u)]
    for i, ch in _view_changes(book, v, steps):
        n += len(ch[0]) + len(ch[1])
        out.append(
            bybit.book_message(
                "BTCUSDT", 50, False, T0 + i, T0 + i, v.texts(ch[0], True), v.texts(ch[1], False), len(out) + 1, book.u
            )
        )
    return out, n


def coinbase_frames(steps: int) -> tuple[list[bytes], int]:
    book, n = _book(), 0

    def texts(side: dict[int, int], desc: bool) -> list[tuple[str, str]]:
        return [(book.price(t), book.qty(side[t])) for t in sorted(side, reverse=desc)]

    snap = coinbase.l2_event("snapshot", "BTC-USD", T0, texts(book.bids, True), texts(book.asks, False))
    out = [coinbase.envelope_us("l2_data", 0, T0 * 1000, b"[%s]" % snap)]
    for i, (t, m) in enumerate(_walk(steps, 1)):
        ev = book.step(t, m)
        book.events.clear()
        n += len(ev.bids) + len(ev.asks)
        up = coinbase.l2_event("update", "BTC-USD", T0 + i, texts(ev.bids, True), texts(ev.asks, False))
        out.append(coinbase.envelope_us("l2_data", len(out), (T0 + i + 1) * 1000, b"[%s]" % up))
    return out, n


def kraken_frames(steps: int) -> tuple[list[bytes], int]:
    n = 0
    book = KrakenBook(SPEC, 6_000_000, False, 1)  # prices and quantities at the pair's precisions
    v = View(book, 10, prune=False)

    def crc() -> int:
        return kraken.book_checksum(v.texts(v.asks, False), v.texts(v.bids, True))

    out = [kraken.book_message("BTC/USD", True, v.texts(v.bids, True), v.texts(v.asks, False), crc(), T0 * 1000)]
    for i, ch in _view_changes(book, v, steps):
        n += len(ch[0]) + len(ch[1])
        out.append(
            kraken.book_message(
                "BTC/USD", False, v.texts(ch[0], True), v.texts(ch[1], False), crc(), (T0 + i + 1) * 1000
            )
        )
    return out, n


def hyperliquid_frames(steps: int) -> tuple[list[bytes], int]:
    book, out = _book(), []
    for i, (t, m) in enumerate(_walk(steps, 1)):
        book.step(t, m)
        book.events.clear()
        bids, asks = top(book.bids, 20, True), top(book.asks, 20, False)
        out.append(
            hl.book_frame(
                "BTC",
                T0 + i,
                [(book.price(p), book.qty(q), 1) for p, q in bids.items()],
                [(book.price(p), book.qty(q), 1) for p, q in asks.items()],
            )
        )
    return out, 40 * len(out)


def _feeds() -> dict[str, tuple[Callable[[], WsBookFeed], str, str, Callable[[int], tuple[list[bytes], int]]]]:
    def kraken_feed() -> WsBookFeed:
        f = KrakenBookFeed(KrakenSettings(), {"BTC/USD": BookKeeper("kraken:BTC/USD", 10)})
        f.precisions = {"BTC/USD": (SPEC.price_decimals, SPEC.lot_decimals)}  # what AssetPairs would say
        return f

    return {
        "bybit": (
            lambda: BybitBookFeed(BybitSettings(), {"BTCUSDT": BookKeeper("bybit:BTCUSDT", 50)}),
            "spot", "BTCUSDT", bybit_frames,
        ),
        "coinbase": (
            lambda: CoinbaseBookFeed(CoinbaseSettings(), {"BTC-USD": BookKeeper("coinbase:BTC-USD", 50)}),
            "ws", "BTC-USD", coinbase_frames,
        ),
        "kraken": (kraken_feed, "v2", "BTC/USD", kraken_frames),
        "hyperliquid": (
            lambda: HyperliquidBookFeed(HyperliquidSettings(), {"BTC": BookKeeper("hyperliquid:BTC", 20)}),
            "ws", "BTC", hyperliquid_frames,
        ),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000, help="book steps (messages) per venue")
    ap.add_argument("--runs", type=int, default=3, help="runs per venue; the median is printed")
    args = ap.parse_args()
    print(f"python bench/venue_books.py --steps {args.steps} --runs {args.runs}")
    for venue, (make, group, sym, frames_of) in _feeds().items():
        frames, levels = frames_of(args.steps)
        secs = []
        for _ in range(args.runs):
            feed = make()
            on_frame = feed.on_frame
            t = time.perf_counter()
            for fr in frames:
                on_frame(group, fr)
            secs.append(time.perf_counter() - t)
            k = feed.keepers[sym]
            assert k.in_sync and not k.resyncs, (venue, k.status())  # every message was taken
        s = statistics.median(secs)
        print(
            f"{venue:12s} {len(frames) / s:10,.0f} messages/s  {levels / s:12,.0f} changed levels/s  "
            f"{s / len(frames) * 1e6:7.1f} us/message  ({len(frames)} messages, {levels / len(frames):.1f} levels each)"
        )


if __name__ == "__main__":
    main()
