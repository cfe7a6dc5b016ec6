"""Binance's decoder samples: verbatim frames and bodies from its docs, as fuzz targets (see
:class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

from collections import Counter

from deltafeed.venues.base import SAMPLE_NOW_MS, FuzzTarget
from deltafeed.venues.binance import codec as binance


def fuzz_targets() -> list[FuzzTarget]:
    return [_stream(), _rest(), _book()]


def _book() -> FuzzTarget:
    """The order-book feed's frame path (decode, level check, the U/u rule, the keeper) after a snapshot."""
    from deltafeed.books import BookKeeper
    from deltafeed.venues.binance import BinanceSettings
    from deltafeed.venues.binance.book import BinanceBookFeed, Snapshot

    depth = (
        b'{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"]],'
        b'"a":[["0.0026","100"]]}'
    )
    keeper = BookKeeper("binance:BNBBTC", depth=20, keep=100)
    feed = BinanceBookFeed(
        BinanceSettings(rest_url="http://127.0.0.1:9", ws_url="ws://127.0.0.1:9"), {"BNBBTC": keeper}
    )
    feed.syncs["BNBBTC"].on_snapshot(Snapshot(156, [(0.0023, 5.0)], [(0.0027, 5.0)]), 0)
    nan_level = binance.wrap_combined("bnbbtc@depth@100ms", depth.replace(b'"0.0024"', b'"NaN"'))
    raw = depth  # a raw-stream frame on the combined connection the feed opens: not its shape
    return FuzzTarget(
        name="binance_book",
        seeds=[
            binance.wrap_combined("bnbbtc@depth@100ms", depth),
            binance.wrap_combined("bnbbtc@depth@100ms", depth.replace(b'"U":157,"u":160', b'"U":161,"u":163')),
            b'{"result":null,"id":1}',
            nan_level,
            raw,
        ],
        bad_seeds=[nan_level, raw],
        run=feed._on_frame,
        skips=lambda: feed.errors,
    )


def _stream() -> FuzzTarget:
    trade = (
        b'{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,'
        b'"m":true,"M":true}'
    )
    kline = (
        b'{"e":"kline","E":1672515782136,"s":"BNBBTC","k":{"t":1672515780000,"T":1672515839999,"s":"BNBBTC",'
        b'"i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,'
        b'"x":false,"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}'
    )
    error_reply = b'{"code":2,"msg":"Invalid request","id":3}'
    nan_price = trade.replace(b'"p":"0.001"', b'"p":"NaN"')
    dec = binance.StreamDecoder()
    return FuzzTarget(
        name="binance_stream",
        seeds=[
            trade,
            binance.wrap_combined("bnbbtc@trade", trade),
            kline,
            binance.wrap_combined("bnbbtc@kline_1m", kline),
            b'{"e":"serverShutdown","E":1770123456789}',
            b'{"result":null,"id":1}',
            error_reply,
            nan_price,
        ],
        bad_seeds=[error_reply, nan_price],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _rest() -> FuzzTarget:
    klines = (
        b'[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",1499644799999,'
        b'"2434.19055334",308,"1756.87402397","28.46694368","0"],[1499040060000,"0.01634790","0.80000000",'
        b'"0.01575800","0.01577100","0.0",1499644859999,"0",0,"0","0","0"]]'
    )

    refused: Counter[str] = Counter()  # the decoders' declared errors, by decoder (each input goes to three)

    def run(data: bytes) -> None:
        for what, decode in (
            ("klines", lambda: binance.decode_klines(data, 60_000, SAMPLE_NOW_MS)),
            ("time", lambda: binance.decode_server_time(data)),
            ("exchange_info", lambda: binance.symbols_from_exchange_info(data)),
        ):
            try:
                decode()
            except binance.BadAnswer:
                refused[f"refused_{what}"] += 1
        binance.decode_error(data)

    return FuzzTarget(
        name="binance_rest",
        seeds=[
            klines,
            b'{"serverTime":1499827319559}',
            b'{"code":-1121,"msg":"Invalid symbol."}',
            b'{"timezone":"UTC","symbols":[{"symbol":"BTCUSDT","status":"TRADING"},'
            b'{"symbol":"ETHUSDT","status":"BREAK"}]}',
        ],
        run=run,
        skips=lambda: refused,
        several_decoders=True,
    )
