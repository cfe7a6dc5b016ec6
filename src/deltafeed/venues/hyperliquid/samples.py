"""Hyperliquid's decoder samples: verbatim frames and bodies from its docs (and ccxt's fixtures), as fuzz
targets (see :class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

from collections import Counter

from deltafeed.venues.base import SAMPLE_NOW_MS, FuzzTarget
from deltafeed.venues.hyperliquid import codec as hl

#: The trades frame of PROTOCOLS-wave2.md 3.1 (ccxt 4.5.90 ``pro/hyperliquid.py``).
TRADES = (
    b'{"channel":"trades","data":[{"coin":"BTC","side":"A","px":"68517.0","sz":"0.005","time":1710125266669,'
    b'"hash":"0xc872699f116e012186620407fc08a802015e0097c5cce74710697f7272e6e959","tid":981894269203506}]}'
)
#: The candle frame: one object, not a list.
CANDLE = (
    b'{"channel":"candle","data":{"t":1710146280000,"T":1710146339999,"s":"BTC","i":"1m","o":"71400.0",'
    b'"c":"71411.0","h":"71422.0","l":"71389.0","v":"1.20407","n":20}}'
)
SUB_ACK = (
    b'{"channel":"subscriptionResponse","data":{"method":"subscribe","subscription":{"type":"trades","coin":"SOL"}}}'
)
PONG = b'{"channel":"pong"}'
ERROR = b'{"channel":"error","data":"Invalid subscription {\\"type\\":\\"trades\\",\\"coin\\":\\"NOPE\\"}"}'
#: An ``l2Book`` frame in the docs' ``WsBook`` shape (``levels`` = [bids, asks] of ``WsLevel``).
L2_BOOK = (
    b'{"channel":"l2Book","data":{"coin":"BTC","time":1710131872708,"levels":[[{"px":"68674.0","sz":"0.97139",'
    b'"n":4},{"px":"68673.0","sz":"0.00033","n":1}],[{"px":"68675.0","sz":"0.0147","n":3}]]}}'
)
#: A ``candleSnapshot`` answer [V info-endpoint].
CANDLES = (
    b'[{"T":1681924499999,"c":"29258.0","h":"29309.0","i":"15m","l":"29250.0","n":189,"o":"29295.0",'
    b'"s":"BTC","t":1681923600000,"v":"0.98639"}]'
)
META = b'{"universe":[{"name":"BTC","szDecimals":5,"maxLeverage":50},{"name":"ETH","szDecimals":4,"maxLeverage":50}]}'


def fuzz_targets() -> list[FuzzTarget]:
    return [_stream(), _rest()]


def _stream() -> FuzzTarget:
    dec = hl.StreamDecoder()
    nan_trade = TRADES.replace(b'"px":"68517.0"', b'"px":"NaN"')
    cut = CANDLE[:70]
    nan_book = L2_BOOK.replace(b'"sz":"0.0147"', b'"sz":"NaN"')
    return FuzzTarget(
        name="hyperliquid_stream",
        seeds=[TRADES, CANDLE, SUB_ACK, PONG, hl.GREETING, ERROR, nan_trade, cut, L2_BOOK, nan_book],
        bad_seeds=[ERROR, nan_trade, cut, nan_book],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _rest() -> FuzzTarget:
    refused: Counter[str] = Counter()

    def run(data: bytes) -> None:
        for what, decode in (
            ("candles", lambda: hl.decode_candles(data, 900_000, SAMPLE_NOW_MS)),
            ("meta", lambda: hl.coins_from_meta(data)),
            ("recent", lambda: hl.last_trade_ms(data)),
        ):
            try:
                decode()
            except hl.BadAnswer:
                refused[f"refused_{what}"] += 1

    return FuzzTarget(
        name="hyperliquid_rest",
        seeds=[CANDLES, META, b"[]"],
        run=run,
        skips=lambda: refused,
        several_decoders=True,
    )
