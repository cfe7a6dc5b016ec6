"""OANDA's decoder samples: verbatim price lines and bodies from its docs, as fuzz targets (see
:class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

from collections import Counter

from deltafeed.venues.base import FuzzTarget
from deltafeed.venues.oanda import codec as oanda


def fuzz_targets() -> list[FuzzTarget]:
    return [_pricing(), _candles()]


def _pricing() -> FuzzTarget:
    price = (
        b'{"type":"PRICE","time":"2016-10-27T08:38:45.664613867Z",'
        b'"bids":[{"price":"1.09274","liquidity":10000000},'
        b'{"price":"1.09273","liquidity":10000000}],"asks":[{"price":"1.09287","liquidity":10000000}],'
        b'"closeoutBid":"1.09274","closeoutAsk":"1.09287","status":"tradeable","tradeable":true,'
        b'"instrument":"EUR_USD"}'
    )
    not_tradeable = price.replace(b'"tradeable":true', b'"tradeable":false')
    dec = oanda.PriceDecoder()
    return FuzzTarget(
        name="oanda_pricing",
        seeds=[
            price,
            b'{"type":"HEARTBEAT","time":"2016-10-27T08:38:44.327443673Z"}',
            b'{"type":"HEARTBEAT","time":"1477557524.327443673"}',
            not_tradeable,
        ],
        bad_seeds=[not_tradeable],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _candles() -> FuzzTarget:
    body = (
        b'{"instrument":"EUR_USD","granularity":"M1","candles":[{"complete":true,"volume":12,'
        b'"time":"2016-10-17T15:16:00.000000000Z","mid":{"o":"1.09700","h":"1.09707","l":"1.09695","c":"1.09703"},'
        b'"bid":{"o":"1.09693","h":"1.09700","l":"1.09688","c":"1.09696"},"ask":{"o":"1.09707","h":"1.09714",'
        b'"l":"1.09702","c":"1.09710"}},{"complete":false,"volume":3,"time":"2016-10-17T15:17:00.000000000Z",'
        b'"mid":{"o":"1.09703","h":"1.09703","l":"1.09701","c":"1.09702"},"bid":{"o":"1.09696","h":"1.09696",'
        b'"l":"1.09694","c":"1.09695"},"ask":{"o":"1.09710","h":"1.09710","l":"1.09708","c":"1.09709"}}]}'
    )

    refused: Counter[str] = Counter()

    def run(data: bytes) -> None:
        try:
            oanda.decode_candles_all(data)
        except oanda.BadCandles:
            refused["refused_candles"] += 1
        oanda.decode_instruments(data)  # its BadCandles is the target's declared error

    return FuzzTarget(
        name="oanda_candles",
        seeds=[body, b'{"instruments":[{"name":"EUR_USD","type":"CURRENCY"},{"name":"XAU_USD"}]}'],
        run=run,
        declared=(oanda.BadCandles,),
        skips=lambda: refused,
        several_decoders=True,
    )
