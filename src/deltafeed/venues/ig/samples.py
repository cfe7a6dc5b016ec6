"""IG's decoder samples: TLCP sessions as Lightstreamer's docs show them, and a REST prices body, as
fuzz targets (see :class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from deltafeed.venues.base import SAMPLE_NOW_MS, FuzzTarget
from deltafeed.venues.ig import codec as ig
from deltafeed.venues.ig import rest as ig_rest
from deltafeed.venues.ig import tlcp


def fuzz_targets() -> list[FuzzTarget]:
    return [_tlcp_stream(), _rest_prices()]


def _tlcp_stream() -> FuzzTarget:
    """TLCP lines through the decoder, the item state and IG's MARKET/CHART decoding, as a session
    holding subscription 1 (a MARKET item) and 2 (a CHART item) applies them."""
    dec = tlcp.LineDecoder()
    igd = ig.IGDecoder(tz="UTC")
    skips: Counter[str] = Counter()

    def run(data: bytes) -> None:
        state = tlcp.ItemState()
        state.open(1, 1, len(ig.MARKET_FIELDS))
        state.open(2, 1, len(ig.CHART_FIELDS))
        for ev in dec.feed(data):
            if isinstance(ev, (tlcp.Subok, tlcp.Subcmd)):
                state.open(ev.sub_id, ev.num_items, ev.num_fields)
            elif isinstance(ev, tlcp.ClearSnapshot):
                state.clear(ev.sub_id, ev.item)
            elif isinstance(ev, tlcp.Unsub):
                state.close(ev.sub_id)
            elif isinstance(ev, tlcp.Update):
                try:
                    values = state.apply(ev)
                except tlcp.BadUpdate:
                    skips["bad_update"] += 1
                    continue
                if ev.sub_id == 1 and len(values) == len(ig.MARKET_FIELDS):
                    igd.market_quote(
                        "CS.D.EURUSD.CFD.IP", dict(zip(ig.MARKET_FIELDS, values, strict=True)), SAMPLE_NOW_MS
                    )
                elif ev.sub_id == 2 and len(values) == len(ig.CHART_FIELDS):
                    igd.chart_candles("CS.D.EURUSD.CFD.IP", dict(zip(ig.CHART_FIELDS, values, strict=True)))

    # Its update ``U,2,1,||||||||^2|1|43`` carries 12 fields for the CHART item's 11: refused (bad_update).
    session = (
        b"WSOK\r\nCONOK,S1a2b3c,50000,5000,*\r\nSERVNAME,Lightstreamer%20HTTP%20Server\r\nCLIENTIP,127.0.0.1\r\n"
        b"CONS,unlimited\r\nSUBOK,1,1,4\r\nSUBOK,2,1,11\r\nCONF,1,unlimited,filtered\r\n"
        b"U,1,1,1.09274|1.09287|10:00:01|TRADEABLE\r\nEOS,1,1\r\nU,1,1,1.09275||10:00:02|\r\nU,1,1,^2|10:00:03|\r\n"
        b"U,2,1,1.1|1.3|1.0|1.2|1.15|1.35|1.05|1.25|" + str(SAMPLE_NOW_MS).encode() + b"|0|42\r\n"
        b"U,2,1,||||||||^2|1|43\r\nPROBE\r\nOV,1,1,3\r\nCS,1,1\r\nSYNC,12\r\nLOOP,0\r\n"
    )
    bad_subcmd = b"SUBCMD,3,1,4,1,2\r\nSUBCMD,1\r\nPROBE\r\n"  # SUBCMD,1 lacks its fields
    huge_subok = b"SUBOK,1,1,60000000\r\nU,1,1,%23|%24|%5E1|a%7Cb%25c%20d\r\nREQOK,3\r\nNOOP\r\n"  # 60M fields
    return FuzzTarget(
        name="tlcp_stream",
        seeds=[
            session,
            b"REQERR,4,19,Bad%20item%2C%20really\r\nEND,31,Closed%20by%20admin\r\nUNSUB,1\r\n",
            b"CONERR,1,User/password%20check%20failed\r\n",
            bad_subcmd,
            huge_subok,
        ],
        bad_seeds=[session, bad_subcmd, huge_subok],
        run=run,
        skips=lambda: dec.errors + igd.errors + skips,
    )


def _rest_prices() -> FuzzTarget:
    row = (
        '{"snapshotTime":"2026/11/13 10:00:00","snapshotTimeUTC":"2026-11-13T15:00:00",'
        '"openPrice":{"bid":1.0912,"ask":1.0914,"lastTraded":null},"closePrice":{"bid":1.0913,"ask":1.0915,"lastTraded":null},'
        '"highPrice":{"bid":1.0915,"ask":1.0917,"lastTraded":null},"lowPrice":{"bid":1.0910,"ask":1.0912,"lastTraded":null},'
        '"lastTradedVolume":42}'
    )
    body = (
        '{"prices":[' + row + "," + row.replace("15:00:00", "15:01:00") + '],"instrumentType":"CURRENCIES",'
        '"metadata":{"allowance":{"remainingAllowance":9998,"totalAllowance":10000,"allowanceExpiry":604800},'
        '"size":2,"pageData":{"pageSize":2,"pageNumber":1,"totalPages":1}}}'
    ).encode()
    t0 = 1_794_585_600_000  # 2026-11-13 15:00 UTC

    def run(data: bytes) -> None:
        ig_rest.error_code(data)
        doc = ig_rest.decode_prices(data)
        out: dict[str, list[Any]] = {"mid": [], "bid": [], "ask": []}
        ig_rest.take_rows(doc.prices, t0, t0 + 5 * 60_000, 60_000, t0 + 10 * 60_000, ("mid", "bid", "ask"), out)

    return FuzzTarget(
        name="ig_rest_prices",
        seeds=[
            body,
            b'{"errorCode":"error.public-api.exceeded-account-historical-data-allowance"}',
            b'{"prices":[],"allowance":{"remainingAllowance":0,"totalAllowance":10000,"allowanceExpiry":1}}',
        ],
        run=run,
        declared=(ig_rest.BadPrices,),
        several_decoders=True,
    )
