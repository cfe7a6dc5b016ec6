"""The Kraken replica speaks Kraken's protocol and keeps its limits: OHLC serves only the newest 720
rows whatever ``since`` says, Trades pages by nanosecond ``since``/``last`` (1000 at most), calls
beyond the public limit get ``EGeneral:Too many requests``, and WS v2 answers each symbol of a
subscribe (an unlisted pair with ``success:false``), pings, and streams sequential trade ids."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import aiohttp

from deltafeed.venues.kraken import codec
from deltafeed.venues.kraken.replica import KrakenReplica


async def test_ohlc_keeps_720_rows_and_trades_page_by_nanoseconds() -> None:
    r = KrakenReplica(symbols=["BTC/USD"], rate=1.0, history_ms=20 * 3_600_000)
    await r.start()
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> dict:  # type: ignore[type-arg]
                async with http.get(r.url + path) as resp:
                    assert resp.status == 200
                    out: dict = await resp.json()  # type: ignore[type-arg]
                    return out

            old = (r.clock.now_ms() - 19 * 3_600_000) // 1000
            for since in ("", f"&since={old}"):
                body = await get(f"/0/public/OHLC?pair=XBTUSD&interval=1{since}")
                rows = body["result"]["XXBTZUSD"]
                assert body["error"] == [] and len(rows) == codec.OHLC_KEEP  # older data cannot be retrieved
                assert body["result"]["last"] == rows[-2][0]  # the last one is forming
            assert (await get("/0/public/OHLC?pair=NOPE"))["error"] == ["EQuery:Unknown asset pair"]
            since_ns = old * 1_000_000_000
            ids: list[int] = []
            for _ in range(3):
                body = await get(f"/0/public/Trades?pair=XXBTZUSD&since={since_ns}")
                page = body["result"]["XXBTZUSD"]
                assert len(page) == codec.TRADES_PAGE
                ids += [row[6] for row in page]
                assert int(body["result"]["last"]) > since_ns
                since_ns = int(body["result"]["last"])
            assert ids == list(range(ids[0], ids[0] + len(ids)))  # no trade lost or repeated across pages
            answers = []
            for _ in range(25):  # far beyond the public call limit
                async with http.get(r.url + "/0/public/Time") as resp:
                    answers.append((resp.status, (await resp.json())["error"]))
    finally:
        await r.stop()
    assert (429, ["EGeneral:Too many requests"]) in answers and answers[0] == (200, [])


async def test_ws_v2_acks_each_symbol_refuses_an_unlisted_pair_and_streams_sequential_ids() -> None:
    r = KrakenReplica(symbols=["BTC/USD"], rate=50.0, history_ms=600_000)
    await r.start()
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(r.ws_url) as ws:
            status = json.loads((await ws.receive()).data)
            assert status["channel"] == "status" and status["data"][0]["api_version"] == "v2"
            await ws.send_str(codec.subscribe("trade", ["BTC/USD", "NOPE/USD"], 1).decode())
            await ws.send_str(codec.ping(2).decode())
            msgs = []
            while sum(1 for m in msgs if m.get("channel") == "trade" and m["type"] == "update") < 5:
                msgs.append(json.loads((await asyncio.wait_for(ws.receive(), 5)).data))
    finally:
        await r.stop()
    acks = [m for m in msgs if m.get("method") == "subscribe"]
    assert [(a["success"], a.get("symbol") or a["result"]["symbol"]) for a in acks] == [
        (True, "BTC/USD"),
        (False, "NOPE/USD"),
    ]
    assert acks[1]["error"] and acks[1]["req_id"] == 1 and "time_in" in acks[1] and "time_out" in acks[1]
    assert any(m.get("method") == "pong" and m["req_id"] == 2 for m in msgs)
    trades = [t for m in msgs if m.get("channel") == "trade" for t in m["data"]]
    first = next(m for m in msgs if m.get("channel") == "trade")
    assert first["type"] == "snapshot" and len(first["data"]) == 50
    ids = [t["trade_id"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))


async def test_book_updates_keep_a_client_book_whose_checksum_matches_every_message() -> None:
    """A client that follows docs.kraken.com's book-checksum-v2 (Decimal parsing, qty 0 deletes,
    truncation to the subscribed depth) agrees with every checksum the replica sends, as the price moves."""
    r = KrakenReplica(symbols=["BTC/USD"], rate=5.0, speed=30.0, history_ms=600_000)
    await r.start()
    asks: dict[Decimal, Decimal] = {}
    bids: dict[Decimal, Decimal] = {}
    checked, moves, tops = 0, 0, set()
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(r.ws_url) as ws:
            await ws.send_str(codec.subscribe("book", ["BTC/USD"], 1, depth=10).decode())
            while checked < 60:
                msg = json.loads((await asyncio.wait_for(ws.receive(), 5)).data, parse_float=Decimal)
                if msg.get("channel") != "book":
                    continue
                [data] = msg["data"]
                if msg["type"] == "snapshot":
                    asks.clear()
                    bids.clear()
                for side, levels in ((asks, data["asks"]), (bids, data["bids"])):
                    for lv in levels:
                        if lv["qty"] == 0:
                            side.pop(lv["price"], None)
                        else:
                            side[lv["price"]] = lv["qty"]
                for side, best_first in ((asks, sorted(asks)), (bids, sorted(bids, reverse=True))):
                    for p in best_first[10:]:
                        del side[p]  # truncated to the depth: no qty 0 comes for these
                a = [(str(p), str(asks[p])) for p in sorted(asks)]
                b = [(str(p), str(bids[p])) for p in sorted(bids, reverse=True)]
                assert len(a) == len(b) == 10 and a[0][0] > b[0][0]
                assert codec.book_checksum(a, b) == data["checksum"], (msg["type"], checked)
                checked += 1
                tops.add(a[0][0])
                moves = len(tops)
    finally:
        await r.stop()
    assert moves >= 3  # the book followed the price through several moves
