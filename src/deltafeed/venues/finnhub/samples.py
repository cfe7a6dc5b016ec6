"""Finnhub's decoder samples: verbatim frames and bodies from its docs, as fuzz targets (see
:class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

from deltafeed.venues.base import FuzzTarget
from deltafeed.venues.finnhub import codec as finnhub


def fuzz_targets() -> list[FuzzTarget]:
    return [_stream(), _candles()]


def _stream() -> FuzzTarget:
    trades = (
        b'{"data":[{"c":["1","8","24","12"],"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467},'
        b'{"p":1.08495,"s":"OANDA:EUR_USD","t":1582641000200,"v":0},{"p":261.75,"s":"AAPL","t":1582641000300,'
        b'"v":5}],"type":"trade"}'
    )
    error = b'{"type":"error","msg":"Subscribing to too many symbols"}'
    cut = b'{"type":"news",'
    overflow = trades.replace(b'"p":7296.89', b'"p":1e400')
    dec = finnhub.StreamDecoder()
    return FuzzTarget(
        name="finnhub_stream",
        seeds=[trades, b'{"type":"ping"}', error, cut, overflow],
        bad_seeds=[error, cut, overflow],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _candles() -> FuzzTarget:
    body = (
        b'{"c":[217.68,221.03,219.89],"h":[222.49,221.5,220.94],"l":[217.19,217.1402,218.83],'
        b'"o":[221.03,218.55,220],"s":"ok","t":[1569297600,1569384000,1569470400],"v":[33463820,24018876,20730608]}'
    )

    def run(data: bytes) -> None:
        finnhub.decode_error(data)
        finnhub.decode_candles(data)

    return FuzzTarget(
        name="finnhub_candles",
        seeds=[body, b'{"s":"no_data"}', b'{"error":"You don\'t have access to this resource."}'],
        run=run,
        declared=(finnhub.BadCandles,),
        several_decoders=True,
    )
