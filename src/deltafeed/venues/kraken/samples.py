"""Kraken's decoder samples: verbatim frames and bodies from docs.kraken.com, as fuzz targets (see
:class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

from collections import Counter

from deltafeed.venues.base import SAMPLE_NOW_MS, FuzzTarget
from deltafeed.venues.kraken import codec as kraken

#: ``websocket-v2/trade`` example.
TRADE = (
    b'{"channel":"trade","type":"snapshot","data":[{"symbol":"MATIC/USD","side":"buy","price":0.5147,'
    b'"qty":6423.46326,"ord_type":"limit","trade_id":4665846,"timestamp":"2023-09-25T07:48:36.925533Z"},'
    b'{"symbol":"MATIC/USD","side":"sell","price":0.5147,"qty":1136.19677815,"ord_type":"limit",'
    b'"trade_id":4665847,"timestamp":"2023-09-25T07:49:36.925603Z"}]}'
)
#: ``websocket-v2/ohlc`` example (its ``timestamp`` is the interval's end, whatever the text says).
OHLC = (
    b'{"channel":"ohlc","type":"update","timestamp":"2023-10-04T16:26:30.524394914Z","data":[{"symbol":"MATIC/USD",'
    b'"open":0.5624,"high":0.5628,"low":0.5622,"close":0.5627,"trades":12,"volume":30927.68066226,"vwap":0.5626,'
    b'"interval_begin":"2023-10-04T16:25:00.000000000Z","interval":5,"timestamp":"2023-10-04T16:30:00.000000Z"}]}'
)
#: ``websocket-v2/book`` subscribe ack (one per symbol).
ACK = (
    b'{"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,"symbol":"ALGO/USD"},'
    b'"success":true,"time_in":"2023-10-06T17:35:55.219022Z","time_out":"2023-10-06T17:35:55.219067Z"}'
)
#: A refused subscription: WS v2's error answer (``success:false``, ``error``, the symbol).
REFUSED = (
    b'{"error":"Currency pair not supported","method":"subscribe","success":false,"symbol":"NOPE/USD",'
    b'"time_in":"2023-10-06T17:35:55.219022Z","time_out":"2023-10-06T17:35:55.219067Z","req_id":7}'
)
HEARTBEAT = b'{"channel":"heartbeat"}'
STATUS = (
    b'{"channel":"status","type":"update","data":[{"version":"2.0.0","system":"online","api_version":"v2",'
    b'"connection_id":12393906104898154338}]}'
)
PONG = (
    b'{"method":"pong","req_id":101,"time_in":"2023-09-24T14:10:23.799685Z","time_out":"2023-09-24T14:10:23.799703Z"}'
)
#: ``get-ohlc-data`` example.
OHLC_BODY = (
    b'{"error":[],"result":{"XXBTZUSD":[[1688671200,"30306.1","30306.2","30305.7","30305.7","30306.1",'
    b'"3.39243896",23],[1688671260,"30304.5","30304.5","30300.0","30300.0","30300.3","4.42996871",18]],'
    b'"last":1688672160}}'
)
#: ``get-recent-trades`` example, and an old 6-element row.
TRADES_BODY = (
    b'{"error":[],"result":{"XXBTZUSD":[["30243.40000","0.34507674",1688669597.8277369,"b","m","",61044952],'
    b'["30243.30000","0.00376960",1688669598.2804112,"s","l","",61044953]],"last":"1688671969993150842"}}'
)
TIME_BODY = b'{"error":[],"result":{"unixtime":1688669448,"rfc1123":"Thu, 06 Jul 23 18:50:48 +0000"}}'
PAIRS_BODY = (
    b'{"error":[],"result":{"XXBTZUSD":{"altname":"XBTUSD","wsname":"XBT/USD","aclass_base":"currency",'
    b'"base":"XXBT","aclass_quote":"currency","quote":"ZUSD","lot":"unit","cost_decimals":5,"pair_decimals":1,'
    b'"lot_decimals":8,"lot_multiplier":1,"status":"online"}}}'
)
ERROR_BODY = b'{"error":["EQuery:Unknown asset pair"]}'

#: The worked example of docs.kraken.com ``book-checksum-v2`` (BTC/USD, price precision 1, qty
#: precision 8): its book as a snapshot, and the checksum the guide gives for it.
DOC_BOOK_CHECKSUM = 3310070434
DOC_BOOK_SNAPSHOT = (
    b'{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":['
    b'{"price":45283.5,"qty":0.10000000},{"price":45283.4,"qty":1.54582015},{"price":45282.1,"qty":0.10000000},'
    b'{"price":45281.0,"qty":0.10000000},{"price":45280.3,"qty":1.54592586},{"price":45279.0,"qty":0.07990000},'
    b'{"price":45277.6,"qty":0.03310103},{"price":45277.5,"qty":0.30000000},{"price":45277.3,"qty":1.54602737},'
    b'{"price":45276.6,"qty":0.15445238}],"asks":['
    b'{"price":45285.2,"qty":0.00100000},{"price":45286.4,"qty":1.54571953},{"price":45286.6,"qty":1.54571109},'
    b'{"price":45289.6,"qty":1.54560911},{"price":45290.2,"qty":0.15890660},{"price":45291.8,"qty":1.54553491},'
    b'{"price":45294.7,"qty":0.04454749},{"price":45296.1,"qty":0.35380000},{"price":45297.5,"qty":0.09945542},'
    b'{"price":45299.5,"qty":0.18772827}],"checksum":3310070434}]}'
)
#: The ``websocket-v2/book`` page's update example (MATIC/USD).
DOC_BOOK_UPDATE = (
    b'{"channel":"book","type":"update","data":[{"symbol":"MATIC/USD","bids":[{"price":0.5657,"qty":1098.3947558}],'
    b'"asks":[],"checksum":2114181697,"timestamp":"2023-10-06T17:35:55.440295Z"}]}'
)
NAN_BOOK = DOC_BOOK_UPDATE.replace(b'"qty":1098.3947558', b'"qty":1e400')


def fuzz_targets() -> list[FuzzTarget]:
    return [_stream(), _rest()]


def _stream() -> FuzzTarget:
    nan_price = TRADE.replace(b'"price":0.5147,"qty":6423', b'"price":1e400,"qty":6423')
    dec = kraken.StreamDecoder()
    return FuzzTarget(
        name="kraken_stream",
        seeds=[
            TRADE,
            OHLC,
            ACK,
            REFUSED,
            HEARTBEAT,
            STATUS,
            PONG,
            nan_price,
            DOC_BOOK_SNAPSHOT,
            DOC_BOOK_UPDATE,
            NAN_BOOK,
        ],
        bad_seeds=[REFUSED, nan_price, NAN_BOOK],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _rest() -> FuzzTarget:
    refused: Counter[str] = Counter()
    declared = (kraken.BadAnswer, kraken.KrakenError)

    def run(data: bytes) -> None:
        for what, decode in (
            ("ohlc", lambda: kraken.decode_ohlc(data, 60_000, SAMPLE_NOW_MS)),
            ("trades", lambda: kraken.decode_trades(data)),
            ("time", lambda: kraken.decode_time(data)),
            ("pairs", lambda: kraken.decode_asset_pairs(data)),
            ("precisions", lambda: kraken.decode_pair_precisions(data)),
        ):
            try:
                decode()
            except declared:
                refused[f"refused_{what}"] += 1
        kraken.error_of(data)

    return FuzzTarget(
        name="kraken_rest",
        seeds=[OHLC_BODY, TRADES_BODY, TIME_BODY, PAIRS_BODY, ERROR_BODY],
        bad_seeds=[ERROR_BODY],
        run=run,
        declared=declared,
        skips=lambda: refused,
        several_decoders=True,
    )
