"""finnhub-python and websocket-client against the Finnhub replica: REST candles through the official
client (which sends ``/api/v1//forex/candle``, a double slash Finnhub accepts) and the trades stream
through a plain ``websocket.WebSocketApp``; both compared with the tape."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

finnhub = pytest.importorskip("finnhub", reason="finnhub-python does not install here")
websocket = pytest.importorskip("websocket", reason="websocket-client does not install here")

from deltafeed.venues.finnhub.replica import FinnhubReplica  # noqa: E402
from reference import read_trade_tape  # noqa: E402

TOKEN = "sandbox-token"
# Wednesday 2026-03-04 15:00 UTC: the FX market open.
START = int(dt.datetime(2026, 3, 4, 15, tzinfo=dt.UTC).timestamp() * 1000)
FX, CRYPTO = "OANDA:EUR_USD", "BINANCE:BTCUSDT"


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[FinnhubReplica]:
    r = FinnhubReplica(
        symbols=[FX, CRYPTO], rate=5.0, speed=5.0, history_ms=2 * 3_600_000, start_ms=START, token=TOKEN,
        tape=tmp_path / "tape.csv",
    )  # fmt: skip
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def _minutes(rows: list[Any], length_ms: int) -> dict[int, tuple[float, float, float, float, Decimal, int]]:
    """(o, h, l, c, volume, items) per candle open (seconds), from tape rows of one symbol."""
    out: dict[int, list[Any]] = {}
    for r in rows:
        out.setdefault((r.time_ms - r.time_ms % length_ms) // 1000, []).append(r)
    return {
        t: (float(g[0].price), max(float(x.price) for x in g), min(float(x.price) for x in g), float(g[-1].price),
            sum((Decimal(x.qty) for x in g), Decimal(0)), len(g))
        for t, g in out.items()
    }  # fmt: skip


async def test_rest_candles_through_the_official_client(replica: FinnhubReplica) -> None:
    def run() -> dict[str, Any]:
        client = finnhub.Client(api_key=TOKEN)
        client.API_URL = replica.rest_url  # the only change
        frm, to = (START - 2 * 3_600_000) // 1000, START // 1000
        return {
            "fx": client.forex_candles(FX, "1", frm, to),
            "crypto": client.crypto_candles(CRYPTO, "5", frm, to),
        }

    got = await asyncio.to_thread(run)
    assert replica.tape_path is not None
    tape = read_trade_tape(replica.tape_path)
    for key, sym, length in (("fx", FX, 60_000), ("crypto", CRYPTO, 300_000)):
        body = got[key]
        assert body["s"] == "ok" and len(body["t"]) >= (2 * 3_600_000 // length) - 2, (key, body.get("s"))
        ref = _minutes([r for r in tape if r.symbol == sym], length)
        for i, t in enumerate(body["t"]):
            o, h, lo, c, v, n = ref[t]
            assert (body["o"][i], body["h"][i], body["l"][i], body["c"][i]) == (o, h, lo, c), (key, t)
            # Forex candles count price updates (the stream's items carry volume 0); crypto sums volumes.
            assert Decimal(str(body["v"][i])) == (n if key == "fx" else v), (key, t)


async def test_trades_stream_through_websocket_client(replica: FinnhubReplica) -> None:
    msgs: list[dict[str, Any]] = []
    opened = threading.Event()

    def on_open(ws: Any) -> None:
        ws.send(json.dumps({"type": "subscribe", "symbol": CRYPTO}))
        opened.set()

    def run() -> None:
        app = websocket.WebSocketApp(
            f"{replica.ws_url}?token={TOKEN}", on_open=on_open, on_message=lambda ws, m: msgs.append(json.loads(m))
        )
        t = threading.Timer(3.0, app.close)
        t.start()
        try:
            app.run_forever()
        finally:
            t.cancel()

    await asyncio.to_thread(run)
    assert opened.is_set()
    items = [i for m in msgs if m.get("type") == "trade" for i in m["data"]]
    assert len(items) > 20
    assert all(i["s"] == CRYPTO and i["c"] is None for i in items)
    assert replica.tape_path is not None
    rows = [r for r in read_trade_tape(replica.tape_path) if r.symbol == CRYPTO]
    key = [(r.time_ms, float(r.price), float(r.qty)) for r in rows]
    first = key.index((items[0]["t"], items[0]["p"], items[0]["v"]))
    assert [(i["t"], i["p"], i["v"]) for i in items] == key[first : first + len(items)]
