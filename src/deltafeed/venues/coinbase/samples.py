"""Coinbase's decoder samples: the verbatim frames and bodies of PROTOCOLS-wave2.md section 1 (the venue's
``websocket-channels`` and candles pages), as fuzz targets (see :class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

from collections import Counter

from deltafeed.venues.base import SAMPLE_NOW_MS, FuzzTarget
from deltafeed.venues.coinbase import codec

HEARTBEAT = (
    b'{"channel":"heartbeats","client_id":"","timestamp":"2023-06-23T20:31:26.122969572Z","sequence_num":0,'
    b'"events":[{"current_time":"2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105",'
    b'"heartbeat_counter":"3049"}]}'
)
CANDLES = (
    b'{"channel":"candles","client_id":"","timestamp":"2023-06-09T20:19:35.39625135Z","sequence_num":0,'
    b'"events":[{"type":"snapshot","candles":[{"start":"1688998200","high":"1867.72","low":"1865.63",'
    b'"open":"1867.38","close":"1866.81","volume":"0.20269406","product_id":"ETH-USD"}]}]}'
)
MARKET_TRADES = (
    b'{"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z","sequence_num":0,'
    b'"events":[{"type":"snapshot","trades":[{"trade_id":"000000000","product_id":"ETH-USD","price":"1260.01",'
    b'"size":"0.3","side":"BUY","time":"2019-08-14T20:42:27.265Z"}]}]}'
)
L2_DATA = (
    b'{"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:50.714964855Z","sequence_num":0,'
    b'"events":[{"type":"snapshot","product_id":"BTC-USD","updates":['
    b'{"side":"bid","event_time":"1970-01-01T00:00:00Z","price_level":"21921.73","new_quantity":"0.06317902"},'
    b'{"side":"bid","event_time":"1970-01-01T00:00:00Z","price_level":"21921.3","new_quantity":"0.02"}]}]}'
)
#: An ``update`` of the same book in the documented shape (values continue the snapshot's): the bid
#: removed, an offer level set.
L2_UPDATE = (
    b'{"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:50.815964855Z","sequence_num":7,'
    b'"events":[{"type":"update","product_id":"BTC-USD","updates":['
    b'{"side":"bid","event_time":"2023-02-09T20:32:50.714964855Z","price_level":"21921.73","new_quantity":"0"},'
    b'{"side":"offer","event_time":"2023-02-09T20:32:50.714964855Z","price_level":"21922.5","new_quantity":"1.25"}'
    b"]}]}"
)
NAN_L2 = L2_UPDATE.replace(b'"new_quantity":"1.25"', b'"new_quantity":"NaN"')
#: The nautilus fixture quoted in PROTOCOLS.md section 2a (an update with a numeric heartbeat counter).
TRADES_UPDATE = (
    b'{"channel":"market_trades","client_id":"","timestamp":"2026-04-07T14:30:02.789012Z","sequence_num":5,'
    b'"events":[{"type":"update","trades":[{"trade_id":"995098700","product_id":"BTC-USD","price":"68900.50",'
    b'"size":"0.00150000","side":"BUY","time":"2026-04-07T14:30:02.789012Z"}]}]}'
)
HEARTBEAT_INT = (
    b'{"channel":"heartbeats","client_id":"","timestamp":"2026-04-07T14:30:10.000000Z","sequence_num":0,'
    b'"events":[{"current_time":"2026-04-07 14:30:10.000000000+00:00","heartbeat_counter":42}]}'
)
SUBSCRIPTIONS = (
    b'{"channel":"subscriptions","client_id":"","timestamp":"2026-04-07T14:30:00.000000Z","sequence_num":0,'
    b'"events":[{"subscriptions":{"level2":["BTC-USD"],"market_trades":["BTC-USD","ETH-USD"]}}]}'
)
ERROR = b'{"type":"error","message":"Failure to subscribe: FOO-USD is not a valid product"}'
NAN_PRICE = MARKET_TRADES.replace(b'"price":"1260.01"', b'"price":"NaN"')

REST_CANDLES = (
    b'{"candles":[{"start":"1712192460","low":"66055.14","high":"66331.99","open":"66312.4","close":"66181.6",'
    b'"volume":"355.82896243"},{"start":"1712192400","low":"66055.14","high":"66331.99","open":"66312.4",'
    b'"close":"66181.6","volume":"355.82896243"}]}'
)
REST_TIME = b'{"iso":"2023-05-31T22:29:10.000Z","epochSeconds":"1685572150","epochMillis":"1685572150000"}'
REST_PRODUCTS = (
    b'{"products":[{"product_id":"BTC-USD","price":"67060","base_increment":"0.00000001",'
    b'"quote_increment":"0.01","status":"online","trading_disabled":false,"product_type":"SPOT"}],'
    b'"num_products":"1"}'
)
REST_ERROR = (
    b'{"error":"INVALID_ARGUMENT","error_details":"start and end argument is invalid - number of candles '
    b'requested should be less than 350","message":"start and end argument is invalid - number of candles '
    b'requested should be less than 350"}'
)


def fuzz_targets() -> list[FuzzTarget]:
    return [_stream(), _rest()]


def _stream() -> FuzzTarget:
    dec = codec.StreamDecoder()
    return FuzzTarget(
        name="coinbase_stream",
        seeds=[
            HEARTBEAT,
            CANDLES,
            MARKET_TRADES,
            L2_DATA,
            L2_UPDATE,
            NAN_L2,
            TRADES_UPDATE,
            HEARTBEAT_INT,
            SUBSCRIPTIONS,
            ERROR,
            NAN_PRICE,
        ],
        bad_seeds=[ERROR, NAN_PRICE, NAN_L2],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _rest() -> FuzzTarget:
    refused: Counter[str] = Counter()

    def run(data: bytes) -> None:
        for what, decode in (
            ("candles", lambda: codec.decode_candles(data, 60, SAMPLE_NOW_MS)),
            ("time", lambda: codec.decode_time(data)),
            ("products", lambda: codec.products_from_body(data)),
        ):
            try:
                decode()
            except codec.BadAnswer:
                refused[f"refused_{what}"] += 1
        codec.decode_error(data)

    return FuzzTarget(
        name="coinbase_rest",
        seeds=[REST_CANDLES, REST_TIME, REST_PRODUCTS, REST_ERROR],
        run=run,
        skips=lambda: refused,
        several_decoders=True,
    )
