"""The IG client side: the TLCP codec on PROTOCOLS.md section 4's verbatim lines, the IG field decoding,
IGSession/IGHistory against a small IG REST server written here, and TlcpPool against a small TLCP
WebSocket server written here (connection limit counted on the server side, drops, LOOP, silence, CONERR)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from deltafeed.model import BadInput, Candle, Quote
from deltafeed.net.http import VenueError
from deltafeed.net.reconnect import ConnectBudget
from deltafeed.venues.ig import codec as ig
from deltafeed.venues.ig import tlcp as t
from deltafeed.venues.ig.pool import ConnectionGate, PoolFull, TlcpPool, TlcpSession
from deltafeed.venues.ig.rest import AllowanceSpent, IGHistory, IGSession
from helpers import ms, serve_app, until

UTC = dt.UTC


# --- TLCP requests ------------------------------------------------------------------------------

# Verbatim from PROTOCOLS.md section 4 (the vendor's TestSubscribe_WS transcript).
DOC_CREATE = (
    "create_session\r\nLS_adapter_set=TEST&LS_cid=mgQkwtwdysogQz2BJ4Ji%20kOj2Bg&LS_send_sync=false&LS_cause=api"
)
DOC_ADD = "control\r\nLS_reqId=1&LS_op=add&LS_subId=1&LS_mode=DISTINCT&LS_group=item&LS_schema=f1%20f2&LS_snapshot=false&LS_ack=false"
DOC_DELETE = "control\r\nLS_reqId=2&LS_subId=1&LS_op=delete&LS_ack=false"
# From the vendor's MPN test transcript (same repository): data adapter and max frequency in their places.
VENDOR_ADD_ADAPTER = "control\r\nLS_reqId=2&LS_op=add&LS_subId=1&LS_mode=MERGE&LS_group=DEV-devid&LS_schema=status%20status_timestamp&LS_data_adapter=adapter&LS_snapshot=true&LS_requested_max_frequency=unfiltered&LS_ack=false"


def test_requests_encode_exactly_as_the_vendor_transcripts() -> None:
    assert t.wsok() == "wsok"
    assert t.create_session(adapter_set="TEST", cid="mgQkwtwdysogQz2BJ4Ji kOj2Bg", cause="api") == DOC_CREATE
    assert t.control(t.subscribe_params(1, 1, "DISTINCT", ["item"], ["f1", "f2"], snapshot=False)) == DOC_ADD
    assert t.control(t.unsubscribe_params(2, 1)) == DOC_DELETE
    assert (
        t.control(
            t.subscribe_params(
                2,
                1,
                "MERGE",
                ["DEV-devid"],
                ["status", "status_timestamp"],
                data_adapter="adapter",
                max_frequency="unfiltered",
            )
        )
        == VENDOR_ADD_ADAPTER
    )


def test_create_session_carries_ig_credentials_percent_encoded_password_last() -> None:
    req = t.create_session("ABC123", "CST-a+b/c=|XST-d&e%f", keepalive_ms=5000)
    name, query = req.split("\r\n")
    assert name == "create_session"
    assert query == (
        "LS_keepalive_millis=5000&LS_user=ABC123&LS_cid=v%20Wntytg4pkpW37AM3P4hwLri8M4OD6Ah6e"
        "&LS_send_sync=false&LS_password=CST-a%2Bb%2Fc%3D%7CXST-d%26e%25f"
    )
    # what a server reads back is the password itself (a literal '+' must not turn into a space)
    assert parse_qs(query)["LS_password"] == ["CST-a+b/c=|XST-d&e%f"]
    assert (
        t.bind_session("S1", keepalive_ms=100, cause="loop")
        == "bind_session\r\nLS_session=S1&LS_keepalive_millis=100&LS_send_sync=false&LS_cause=loop"
    )
    assert t.ws_url("https://demo-apd.marketdatasystems.com") == "wss://demo-apd.marketdatasystems.com/lightstreamer"
    assert t.ws_url("http://127.0.0.1:8080/") == "ws://127.0.0.1:8080/lightstreamer"


def test_control_batches_keep_every_message_within_the_request_limit() -> None:
    queries = [
        t.subscribe_params(i, i, "MERGE", [f"MARKET:CS.D.PAIR{i}.CFD.IP"], ig.MARKET_FIELDS) for i in range(1, 30)
    ]
    msgs = t.control_batches(queries, 400)
    assert len(msgs) > 1
    assert all(len(m.encode()) <= 400 for m in msgs)
    lines = [ln for m in msgs for ln in m.split("\r\n")]
    assert lines.count("control") == len(msgs)
    assert [ln for ln in lines if ln != "control"] == queries  # every query once, in order
    assert t.control_batches(queries, 100_000) == [t.control(*queries)]


# --- TLCP server lines --------------------------------------------------------------------------


def test_transcript_lines_decode_into_events() -> None:
    d = t.LineDecoder()
    evs = d.feed("WSOK\r\nCONOK,sid,70000,5000,*\r\nSUBOK,1,1,2\r\nU,1,1,a|b\r\nEOS,1,1\r\nCS,1,1\r\nOV,1,1,33\r\n")
    assert evs == [
        t.Wsok(),
        t.Conok("sid", 70000, 5000, None),
        t.Subok(1, 1, 2),
        t.Update(1, 1, "a|b"),
        t.EndOfSnapshot(1, 1),
        t.ClearSnapshot(1, 1),
        t.Overflow(1, 1, 33),
    ]
    assert d.feed(b"UNSUB,1\r\nPROBE\r\nNOOP\r\nSYNC,12\r\nLOOP,0\r\nREQOK,3\r\nREQOK\r\n") == [
        t.Unsub(1),
        t.Probe(),
        t.Noop(),
        t.Sync(12),
        t.Loop(0),
        t.Reqok(3),
        t.Reqok(None),
    ]
    assert d.feed(
        "REQERR,4,19,Bad%20item%2C%20really\r\nERROR,65,Bad%20request\r\nEND,31,Closed%20by%20admin\r\n"
        "CONERR,1,User/password%20check%20failed\r\n"
    ) == [
        t.Reqerr(4, 19, "Bad item, really"),
        t.Error(65, "Bad request"),
        t.End(31, "Closed by admin"),
        t.Conerr(1, "User/password check failed"),
    ]
    assert d.feed(
        "SERVNAME,Lightstreamer%20HTTP%20Server\r\nCLIENTIP,127.0.0.1\r\nCONS,unlimited\r\n"
        "CONF,2,unlimited,filtered\r\nSUBCMD,3,1,4,1,2\r\nPROG,5\r\nCONOK,S2,50000,100,push.example.com\r\n"
    ) == [
        t.Info("SERVNAME", "Lightstreamer HTTP Server"),
        t.Info("CLIENTIP", "127.0.0.1"),
        t.Info("CONS", "unlimited"),
        t.Conf(2, "unlimited", True),
        t.Subcmd(3, 1, 4, 1, 2),
        t.Info("PROG", "5"),
        t.Conok("S2", 50000, 100, "push.example.com"),
    ]
    assert not d.errors and not d.unknown


def test_unknown_and_malformed_lines_are_counted_and_skipped() -> None:
    d = t.LineDecoder()
    evs = d.feed(
        "MSGDONE,*,1,\r\nMPNREG,devid,adapter\r\nU,1\r\nU,x,1,a\r\nSUBOK,1\r\nCONOK,sid,lots,5000,*\r\nPROBE\r\n"
    )
    assert [type(e) for e in evs] == [t.Malformed] * 4 + [t.Probe]
    assert [e.kind for e in evs if isinstance(e, t.Malformed)] == ["U", "U", "SUBOK", "CONOK"]
    assert d.unknown == Counter({"MSGDONE": 1, "MPNREG": 1})
    assert d.errors == Counter({"U": 2, "SUBOK": 1, "CONOK": 1})
    assert "CONOK" in d.last_error
    assert d.lines == 7


@pytest.mark.parametrize(
    "line",
    [
        "SUBCMD,1",
        "SUBCMD,1,1,4,9,2",
        "SUBOK,1,1,60000000",
        "SUBOK,1,60000000,4",
        "SUBOK,-1,1,4",
        "EOS,1",
        "OV,1,1",
        "CS",
        "UNSUB",
        "REQERR",
        "REQERR,x,1,m",
        "CONOK",
        "CONOK,,1,1",
        "END,x",
        "ERROR",
        "CONERR",
        "LOOP,x",
        "SYNC",
        "CONF,1",
        "U,1,1",
        "U,1," + "9" * 5000 + ",a",
        "U,\u0661,1,a",
        "U,1,99999999999999999999,a",
        "OV,1,1,-3",
    ],
)
def test_poison_lines_are_counted_never_raised(line: str) -> None:
    """``SUBCMD,1`` used to raise TypeError (and end IG streaming); ``SUBOK,1,1,60000000`` made
    ItemState allocate 60 million fields. Every such line is one counted Malformed event now."""
    d = t.LineDecoder()
    evs = d.feed(line + "\r\nPROBE\r\n")
    assert len(evs) == 2 and isinstance(evs[0], t.Malformed) and evs[1] == t.Probe(), evs
    assert sum(d.errors.values()) == 1 and not d.errors["decoder_bug"]


def test_item_state_allocates_items_when_updated_and_refuses_huge_shapes() -> None:
    s = t.ItemState()
    s.open(1, t.MAX_ITEMS, 3)  # costs nothing per item until one is updated
    assert s.values(1, t.MAX_ITEMS) == [None, None, None] and s.values(1, t.MAX_ITEMS + 1) is None
    assert s.apply(t.Update(1, 7, "a|b|c")) == ["a", "b", "c"]
    with pytest.raises(ValueError):
        s.open(2, 1, t.MAX_FIELDS + 1)
    with pytest.raises(t.BadUpdate):
        s.apply(t.Update(1, 7, "^" + "9" * 5000))


def _applied(lines: list[str], fields: int = 4, items: int = 2) -> list[list[str | None]]:
    d, s = t.LineDecoder(), t.ItemState()
    s.open(1, items, fields)
    out = []
    for ev in d.feed("\r\n".join(lines)):
        assert isinstance(ev, t.Update)
        out.append(s.apply(ev))
    return out


def test_update_compression_rules_from_the_vendor_tests() -> None:
    # PROTOCOLS.md: `U,1,1,A|` (second field unchanged), `U,1,2,|D`, `U,1,1,|||DELETE`
    assert _applied(["U,1,1,a|b", "U,1,1,A|", "U,1,2,|D"], fields=2) == [["a", "b"], ["A", "b"], [None, "D"]]
    assert _applied(["U,1,1,k|ADD|x|y", "U,1,1,|||DELETE"]) == [["k", "ADD", "x", "y"], ["k", "ADD", "x", "DELETE"]]


def test_null_empty_skip_and_percent_decoding() -> None:
    got = _applied(
        [
            "U,1,1,1.1|1.2|12:00:00|TRADEABLE",
            "U,1,1,#|$|^2",  # null, empty, two unchanged
            "U,1,1,^3|CLOSED",  # skip three, then one
            "U,1,1,%23|%24|%5E1|a%7Cb%25c%20d",  # '#', '$', '^' and '|' as content
            "U,1,1,^4",
        ]
    )
    assert got == [
        ["1.1", "1.2", "12:00:00", "TRADEABLE"],
        [None, "", "12:00:00", "TRADEABLE"],
        [None, "", "12:00:00", "CLOSED"],
        ["#", "$", "^1", "a|b%c d"],
        ["#", "$", "^1", "a|b%c d"],
    ]
    assert got[0] is not got[1]  # every update is a new list: a caller may keep the old one


def test_bad_updates_raise_and_leave_the_state_unchanged() -> None:
    d, s = t.LineDecoder(), t.ItemState()
    s.open(1, 1, 3)
    s.apply(t.Update(1, 1, "a|b|c"))
    for raw in ("x|y", "x|y|z|w", "^4", "x|^3", "^Pjson|b|c", "^Tdiff||"):
        with pytest.raises(t.BadUpdate):
            s.apply(t.Update(1, 1, raw))
        assert s.values(1, 1) == ["a", "b", "c"]
    with pytest.raises(t.BadUpdate, match="not active"):
        s.apply(t.Update(2, 1, "a|b|c"))
    with pytest.raises(t.BadUpdate, match="has 1 items"):
        s.apply(t.Update(1, 2, "a|b|c"))
    s.clear(1, 1)
    assert s.values(1, 1) == [None, None, None]
    s.close(1)
    assert s.values(1, 1) is None
    assert d.errors == Counter()


# --- IG fields ----------------------------------------------------------------------------------


def _market(
    bid: str | None = "1.0912",
    offer: str | None = "1.0914",
    time_: str | None = "12:30:45",
    state: str | None = "TRADEABLE",
) -> dict[str, str | None]:
    return {"BID": bid, "OFFER": offer, "UPDATE_TIME": time_, "MARKET_STATE": state}


def test_market_quote_reads_update_time_as_uk_time_on_the_venue_date() -> None:
    dec = ig.IGDecoder()
    summer = dec.market_quote("CS.D.EURUSD.CFD.IP", _market(), now_ms=ms(2024, 7, 1, 11, 31))
    assert summer == Quote("CS.D.EURUSD.CFD.IP", ms(2024, 7, 1, 11, 30, 45), 1.0912, 1.0914)  # BST = UTC+1
    winter = dec.market_quote("CS.D.EURUSD.CFD.IP", _market(), now_ms=ms(2024, 1, 15, 12, 31))
    assert winter is not None and winter.time_ms == ms(2024, 1, 15, 12, 30, 45)  # GMT = UTC
    # just before UK midnight, received just after it: still the day before
    late = dec.market_quote("E", _market(time_="23:59:59"), now_ms=ms(2024, 1, 16, 0, 0, 2))
    assert late is not None and late.time_ms == ms(2024, 1, 15, 23, 59, 59)
    # the repeated hour when the UK clocks go back (27 Oct 2024, 01:00-02:00 happens twice)
    first = dec.market_quote("E", _market(time_="01:30:00"), now_ms=ms(2024, 10, 27, 0, 30, 3))
    second = dec.market_quote("E", _market(time_="01:30:00"), now_ms=ms(2024, 10, 27, 1, 30, 3))
    assert first is not None and first.time_ms == ms(2024, 10, 27, 0, 30)
    assert second is not None and second.time_ms == ms(2024, 10, 27, 1, 30)
    assert ig.IGDecoder(tz="UTC").market_quote("E", _market(), now_ms=ms(2024, 7, 1, 12, 31)) == Quote(
        "E", ms(2024, 7, 1, 12, 30, 45), 1.0912, 1.0914
    )
    assert not dec.errors


def test_update_time_cache_agrees_with_the_direct_computation() -> None:
    dec = ig.IGDecoder()
    now = ms(2024, 3, 31, 0, 50)  # UK clocks go forward at 01:00 UTC
    for step in range(0, 4 * 3600, 37):
        n = now + step * 1000
        local = dt.datetime.fromtimestamp(n / 1000 - 2, ig.UK).strftime("%H:%M:%S")
        q = dec.market_quote("E", _market(time_=local), now_ms=n)
        assert q is not None and q.time_ms == ig.update_time_ms(local, n) == (n // 1000 - 2) * 1000, local


def test_market_quote_skips_what_is_not_a_tradeable_price_and_counts_it() -> None:
    dec = ig.IGDecoder()
    now = ms(2024, 7, 1, 11, 31)
    for state in ("CLOSED", "OFFLINE", "EDIT", "AUCTION", "AUCTION_NO_EDIT", "SUSPENDED", None):
        assert dec.market_quote("E", _market(state=state), now) is None
    assert dec.errors == Counter({"not_tradeable": 7})
    assert dec.market_quote("E", _market(bid=None), now) is None
    assert dec.market_quote("E", _market(offer="abc"), now) is None
    assert dec.market_quote("E", _market(bid="-1"), now) is None
    assert dec.market_quote("E", _market(time_="12:30"), now) is None
    assert dec.market_quote("E", _market(time_="25:00:00"), now) is None
    assert dec.market_quote("E", _market(time_=None), now) is None
    assert dec.errors["bad_field"] == 5 and dec.errors["impossible_value"] == 1
    for bid in ("NaN", "inf", "1e400", "0", "-0"):
        assert dec.market_quote("E", _market(bid=bid), now) is None
    assert dec.errors["impossible_value"] == 6
    assert dec.market_quote("E", _market(time_="12:30:4\u0665"), now) is None  # not an ASCII digit
    assert dec.chart_candles("E", _chart(BID_LOW="nan")).keys() == {"ask"}
    assert dec.chart_candles("E", _chart(UTM="9" * 5000)) == {}
    assert dec.errors["impossible_value"] == 7 and not dec.errors["decoder_bug"]


def _chart(**over: str | None) -> dict[str, str | None]:
    f: dict[str, str | None] = {
        "BID_OPEN": "1.1",
        "BID_HIGH": "1.3",
        "BID_LOW": "1.0",
        "BID_CLOSE": "1.2",
        "OFR_OPEN": "1.15",
        "OFR_HIGH": "1.35",
        "OFR_LOW": "1.05",
        "OFR_CLOSE": "1.25",
        "UTM": str(ms(2024, 7, 1, 11, 30) + 17_123),
        "CONS_END": "0",
        "CONS_TICK_COUNT": "42",
    }
    f.update(over)
    return f


def test_chart_candles_bid_and_ask_with_utm_floored_and_cons_end() -> None:
    dec = ig.IGDecoder()
    got = dec.chart_candles("E", _chart())
    t0 = ms(2024, 7, 1, 11, 30)
    assert got == {
        "bid": Candle(t0, 1.1, 1.3, 1.0, 1.2, 42.0, 42, False),
        "ask": Candle(t0, 1.15, 1.35, 1.05, 1.25, 42.0, 42, False),
    }
    assert set(got) == {"bid", "ask"}  # no mid: see ig's docstring
    closed = dec.chart_candles("E", _chart(CONS_END="1", CONS_TICK_COUNT=None))
    assert closed["bid"].closed and closed["ask"].closed and closed["bid"].trades == 0
    only_bid = dec.chart_candles("E", _chart(OFR_HIGH=None))
    assert set(only_bid) == {"bid"}
    assert dec.chart_candles("E", _chart(UTM=None)) == {}
    assert dec.chart_candles("E", _chart(UTM="soon")) == {}
    assert dec.errors == Counter({"bad_field": 3})


def test_epic_helpers() -> None:
    assert ig.fx_epic("EUR_USD") == "CS.D.EURUSD.CFD.IP"
    assert ig.fx_epic("gbp/jpy", "MINI") == "CS.D.GBPJPY.MINI.IP"
    assert ig.epic_pair("CS.D.EURUSD.CFD.IP") == "EUR_USD"
    assert ig.epic_pair("IX.D.FTSE.DAILY.IP") is None
    assert ig.check_epic(" ix.d.ftse.daily.ip ") == "IX.D.FTSE.DAILY.IP"
    assert ig.market_item("CS.D.EURUSD.CFD.IP") == "MARKET:CS.D.EURUSD.CFD.IP"
    assert ig.chart_item("CS.D.EURUSD.CFD.IP") == "CHART:CS.D.EURUSD.CFD.IP:1MINUTE"
    assert ig.parse_item("CHART:CS.D.EURUSD.CFD.IP:1MINUTE") == ("CHART", "CS.D.EURUSD.CFD.IP", "1MINUTE")
    assert ig.parse_item("MARKET:CS.D.EURUSD.CFD.IP") == ("MARKET", "CS.D.EURUSD.CFD.IP", None)
    for pair in ("EUR_US", "EUR_USD1", "EUR-USD"):
        with pytest.raises(BadInput):
            ig.fx_epic(pair)
    for epic in ("EURUSD", "CS.D", "CS.D.EUR USD.CFD.IP", "MARKET:CS.D.EURUSD.CFD.IP"):
        with pytest.raises(BadInput):
            ig.check_epic(epic)
    with pytest.raises(ValueError):
        ig.parse_item("PRICE:ACC:CS.D.EURUSD.CFD.IP")


# --- IG REST ------------------------------------------------------------------------------------

API_KEY = "k3y-0123456789-apikey"
USER, PASSWORD = "deltafeed-user", "pa55-Wörd|&secret"
SECRETS = (API_KEY, PASSWORD, "cst-", "xst-")


@dataclass
class FakeIGRest:
    """IG's POST /session (v2) and GET /prices/{epic} (v3) for 1-minute rows, with the allowance."""

    remaining: int = 10_000
    total: int = 10_000
    expiry_s: int = 3600
    page_cap: int = 10_000
    refuse_allowance: bool = False
    report_allowance: bool = True
    data_from: int = ms(2024, 7, 1, 10, 0)
    data_to: int = ms(2024, 7, 1, 20, 0)
    holes: frozenset[int] = frozenset()
    logins: int = 0
    cst: str = ""
    xst: str = ""
    prices: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/session", self.session)
        app.router.add_get("/prices/{epic}", self.history)
        return app

    async def session(self, request: web.Request) -> web.Response:
        assert request.headers["X-IG-API-KEY"] == API_KEY and request.headers["VERSION"] == "2"
        body = await request.json()
        if body != {"identifier": USER, "password": PASSWORD}:
            return web.json_response({"errorCode": "error.security.invalid-details"}, status=401)
        self.logins += 1
        self.cst, self.xst = f"cst-{self.logins}-0123456789abcdef", f"xst-{self.logins}-fedcba9876543210"
        return web.json_response(
            {
                "currentAccountId": "ABC123",
                "clientId": "1",
                "lightstreamerEndpoint": "https://demo-apd.marketdatasystems.com",
            },
            headers={"CST": self.cst, "X-SECURITY-TOKEN": self.xst},
        )

    def expire_tokens(self) -> None:
        self.cst = self.xst = "expired"

    async def history(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.prices.append(q)
        h = request.headers
        if h.get("X-IG-API-KEY") != API_KEY or h.get("CST") != self.cst or h.get("X-SECURITY-TOKEN") != self.xst:
            self.statuses.append(401)
            return web.json_response({"errorCode": "error.security.client-token-invalid"}, status=401)
        assert h["VERSION"] == "3" and q["resolution"] == "MINUTE"
        if request.match_info["epic"] != "CS.D.EURUSD.CFD.IP":
            self.statuses.append(404)
            return web.json_response({"errorCode": "error.service.marketdata.instrument.epic.unavailable"}, status=404)
        lo = int(dt.datetime.fromisoformat(q["from"]).replace(tzinfo=UTC).timestamp() * 1000)
        hi = int(dt.datetime.fromisoformat(q["to"]).replace(tzinfo=UTC).timestamp() * 1000)
        first = max(lo, self.data_from)
        first += -first % 60_000
        rows = [m for m in range(first, min(hi, self.data_to) + 1, 60_000) if m not in self.holes]
        size = min(int(q["pageSize"]) or len(rows) or 1, self.page_cap)
        number = int(q.get("pageNumber", "1"))
        pages = max(1, -(-len(rows) // size))
        page = rows[(number - 1) * size : number * size]
        if self.refuse_allowance or len(page) > self.remaining:
            self.statuses.append(403)
            return web.json_response(
                {"errorCode": "error.public-api.exceeded-account-historical-data-allowance"}, status=403
            )
        self.remaining -= len(page)
        self.statuses.append(200)
        meta: dict[str, Any] = {
            "size": len(page),
            "pageData": {"pageSize": size, "pageNumber": number, "totalPages": pages},
        }
        if self.report_allowance:
            meta["allowance"] = {
                "remainingAllowance": self.remaining,
                "totalAllowance": self.total,
                "allowanceExpiry": self.expiry_s,
            }
        return web.json_response(
            {"prices": [self.row(m) for m in page], "instrumentType": "CURRENCIES", "metadata": meta}
        )

    @staticmethod
    def row(m: int) -> dict[str, Any]:
        k = (m // 60_000) % 100
        bid = 1.1 + k / 10_000

        def p(x: float) -> dict[str, float | None]:
            return {"bid": round(x, 5), "ask": round(x + 0.0002, 5), "lastTraded": None}

        utc = dt.datetime.fromtimestamp(m / 1000, UTC)
        return {
            "snapshotTime": utc.strftime("%Y/%m/%d %H:%M:%S"),
            "snapshotTimeUTC": utc.strftime("%Y-%m-%dT%H:%M:%S"),
            "openPrice": p(bid),
            "closePrice": p(bid + 0.0001),
            "highPrice": p(bid + 0.0005),
            "lowPrice": p(bid - 0.0005),
            "lastTradedVolume": 7,
        }


@contextlib.asynccontextmanager
async def ig_rest(fake: FakeIGRest, **kw: Any) -> AsyncIterator[tuple[IGSession, IGHistory]]:
    async with serve_app(fake.app()) as url:
        session = IGSession(url, API_KEY, USER, PASSWORD, rate_per_minute=6000, **kw)
        hist = IGHistory(session)
        try:
            yield session, hist
        finally:
            await hist.close()


def _no_secrets(text: str, fake: FakeIGRest) -> None:
    for s in (*SECRETS, fake.cst, fake.xst):
        assert not s or s not in text, s


async def test_login_keeps_tokens_out_of_repr_and_gives_the_streaming_credentials() -> None:
    fake = FakeIGRest()
    async with ig_rest(fake) as (session, hist):
        with pytest.raises(RuntimeError):
            _ = session.ls_password
        assert await session.ls_credentials() == ("ABC123", f"CST-{fake.cst}|XST-{fake.xst}")
        assert session.lightstreamer_endpoint == "https://demo-apd.marketdatasystems.com"
        assert session.account_id == "ABC123" and fake.logins == 1
        await session.ensure()
        assert fake.logins == 1  # fresh tokens are reused
        _no_secrets(repr(session) + repr(hist) + repr(vars(hist)), fake)


async def test_tokens_are_refreshed_when_old_and_on_401() -> None:
    fake = FakeIGRest()
    async with ig_rest(fake, refresh_after_s=0.2) as (session, hist):
        await session.login()
        await asyncio.sleep(0.25)
        assert await session.ls_password_fresh() == f"CST-cst-2-0123456789abcdef|XST-{fake.xst}"
        assert fake.logins == 2
        fake.expire_tokens()
        got = await hist.candles("CS.D.EURUSD.CFD.IP", "1m", ms(2024, 7, 1, 12), ms(2024, 7, 1, 12, 4))
        assert fake.logins == 3 and 401 in fake.statuses
        assert len(got) == 5


async def test_refused_login_and_errors_never_carry_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeIGRest()
    async with serve_app(fake.app()) as url:
        bad = IGSession(url, API_KEY, USER, "wrong-" + PASSWORD, rate_per_minute=6000)
        with pytest.raises(VenueError) as exc:
            await bad.login()
        assert exc.value.status == 401 and "invalid-details" in str(exc.value) and "IG_PASSWORD" in str(exc.value)
        _no_secrets(str(exc.value) + repr(exc.value), fake)
        await bad.close()
        session = IGSession(url, API_KEY, USER, PASSWORD, rate_per_minute=6000)
        hist = IGHistory(session)
        with pytest.raises(VenueError) as exc:
            await hist.candles("CS.D.GBPUSD.CFD.IP", "1m", ms(2024, 7, 1, 12), ms(2024, 7, 1, 12, 4))
        assert exc.value.status == 404 and exc.value.__cause__ is None
        assert fake.cst and fake.xst
        _no_secrets(str(exc.value) + repr(exc.value) + exc.value.url + caplog.text, fake)
        await hist.close()


async def test_candles_mid_bid_ask_with_the_allowance_tracked() -> None:
    fake = FakeIGRest(remaining=9644, holes=frozenset({ms(2024, 7, 1, 12, 3)}))
    async with ig_rest(fake) as (_, hist):
        assert hist.allowance == (None, None, None)
        before = int(time.time() * 1000)
        mid = await hist.candles(
            "CS.D.EURUSD.CFD.IP", "1m", ms(2024, 7, 1, 12), ms(2024, 7, 1, 12, 9), now_ms=ms(2024, 7, 1, 12, 9, 30)
        )
        # the first request is a one-point probe (the allowance is unknown); the rest is one request
        assert [(q["from"], q["to"], q["pageSize"]) for q in fake.prices] == [
            ("2024-07-01T11:59:59", "2024-07-01T12:00:59", "1"),
            ("2024-07-01T12:00:59", "2024-07-01T12:09:59", "9"),
        ]
        assert [c.open_time for c in mid] == [ms(2024, 7, 1, 12, m) for m in (0, 1, 2, 4, 5, 6, 7, 8, 9)]
        row = FakeIGRest.row(ms(2024, 7, 1, 12, 4))
        c = mid[3]
        assert c.open == pytest.approx((row["openPrice"]["bid"] + row["openPrice"]["ask"]) / 2)
        assert c.high == pytest.approx((row["highPrice"]["bid"] + row["highPrice"]["ask"]) / 2)
        assert (c.volume, c.trades) == (7.0, 7)
        assert all(x.closed for x in mid[:-1]) and not mid[-1].closed  # 12:09 is still forming at 12:09:30
        remaining, total, resets = hist.allowance
        assert (remaining, total) == (9644 - 9, 10_000) == (fake.remaining, fake.total)
        assert resets is not None and before + 3_600_000 <= resets <= int(time.time() * 1000) + 3_600_000
        sides = await hist.candles_all_sides("CS.D.EURUSD.CFD.IP", "1m", ms(2024, 7, 1, 12), ms(2024, 7, 1, 12, 9))
        assert len(fake.prices) == 3  # one request for all three sides: the allowance is known now
        assert [x.row() for x in sides["mid"]] == [x.row() for x in mid]
        assert [x.open for x in sides["bid"]] == [FakeIGRest.row(x.open_time)["openPrice"]["bid"] for x in mid]
        assert [x.close for x in sides["ask"]] == [FakeIGRest.row(x.open_time)["closePrice"]["ask"] for x in mid]
        assert all(x.closed for x in sides["ask"])  # without now_ms: the answer's Date (today) closes them all


async def test_pages_follow_ig_paging_when_it_caps_the_page_size() -> None:
    fake = FakeIGRest(page_cap=4)
    async with ig_rest(fake) as (_, hist):
        got = await hist.candles("CS.D.EURUSD.CFD.IP", "1m", ms(2024, 7, 1, 12), ms(2024, 7, 1, 12, 30), side="bid")
        assert [c.open_time for c in got] == list(range(ms(2024, 7, 1, 12), ms(2024, 7, 1, 12, 30) + 1, 60_000))
        assert [q["pageNumber"] for q in fake.prices] == ["1", "1", "2", "3", "4", "5", "6", "7", "8"]


async def test_a_request_that_could_overrun_the_allowance_is_never_sent() -> None:
    fake = FakeIGRest(remaining=5)
    async with ig_rest(fake) as (_, hist):
        with pytest.raises(AllowanceSpent) as exc:
            await hist.candles("CS.D.EURUSD.CFD.IP", "1m", ms(2024, 7, 1, 12), ms(2024, 7, 1, 12, 9))
        e = exc.value
        assert isinstance(e, VenueError) and e.status == 403 and not e.sent
        assert len(fake.prices) == 1 and fake.remaining == 4  # only the probe went out
        assert (e.needed, e.remaining, e.total) == (9, 4, 10_000)
        assert e.resume_ms == ms(2024, 7, 1, 12, 1)
        assert [c.open_time for c in e.candles["mid"]] == [ms(2024, 7, 1, 12)]
        assert e.resets_at_ms is not None and "resets at" in str(e) and "UTC" in str(e)
        # what is left still pays for small requests
        got = await hist.candles("CS.D.EURUSD.CFD.IP", "1m", ms(2024, 7, 1, 12, 1), ms(2024, 7, 1, 12, 4))
        assert len(got) == 4 and fake.remaining == 0 and len(fake.prices) == 2
        with pytest.raises(AllowanceSpent):
            await hist.candles("CS.D.EURUSD.CFD.IP", "1m", ms(2024, 7, 1, 12, 5), ms(2024, 7, 1, 12, 5))
        assert len(fake.prices) == 2


async def test_ig_refusing_for_the_allowance_becomes_allowance_spent() -> None:
    fake = FakeIGRest(refuse_allowance=True)
    async with ig_rest(fake) as (_, hist):
        with pytest.raises(AllowanceSpent) as exc:
            await hist.candles("CS.D.EURUSD.CFD.IP", "1m", ms(2024, 7, 1, 12), ms(2024, 7, 1, 12, 9))
        assert exc.value.sent and exc.value.remaining == 0 and exc.value.resume_ms == ms(2024, 7, 1, 12)
        assert "exceeded-account-historical-data-allowance" in str(exc.value)
        assert hist.allowance[0] == 0


async def test_a_server_that_never_reports_the_allowance_is_not_crawled_one_point_at_a_time() -> None:
    fake = FakeIGRest(report_allowance=False)
    async with ig_rest(fake) as (_, hist):
        got = await hist.candles("CS.D.EURUSD.CFD.IP", "1m", ms(2024, 7, 1, 12), ms(2024, 7, 1, 12, 30))
        assert len(got) == 31 and [q["pageSize"] for q in fake.prices] == ["1", "30"]
        assert hist.allowance == (None, None, None)


async def test_timeframes_ig_cannot_serve_are_bad_input() -> None:
    async with ig_rest(FakeIGRest()) as (_, hist):
        for tf in ("1s", "5s", "2h"):
            with pytest.raises(BadInput):
                await hist.candles("CS.D.EURUSD.CFD.IP", tf, 0, 60_000)
        with pytest.raises(BadInput):
            await hist.candles("CS.D.EURUSD.CFD.IP", "1m", 0, 60_000, side="last")


# --- a small TLCP server ------------------------------------------------------------------------


@dataclass
class _LSSession:
    sid: str
    ws: web.WebSocketResponse | None
    subs: dict[int, tuple[str, list[str]]] = field(default_factory=dict)  # subId -> (item, schema)
    ticks: Counter[int] = field(default_factory=Counter)


class FakeLS:
    """TLCP over WebSocket: WSOK, CONOK/CONERR, control add/delete/destroy, bind_session, PROBEs, and a pump
    sending one MARKET update per subscription every ``pump_s``: a full snapshot, then BID alone
    (``<bid>|^2|``) so the client must fill in the unchanged fields. Counts concurrent connections."""

    def __init__(
        self, user: str = "ABC123", password: str = "CST-c|XST-x", keepalive_ms: int = 150, pump_s: float = 0.02
    ) -> None:
        self.user, self.password = user, password
        self.keepalive_ms = keepalive_ms
        self.pump_s = pump_s
        self.open = 0
        self.max_open = 0
        self.connections = 0
        self.sessions: dict[str, _LSSession] = {}
        self.requests: list[str] = []
        self.silent: set[str] = set()
        self.old_sessions: list[str] = []
        self._n = 0
        self._pump: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/lightstreamer", self.handle)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self._pump = asyncio.create_task(self.pump())

    async def _stop(self, app: web.Application) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    def live(self) -> list[_LSSession]:
        return [s for s in self.sessions.values() if s.ws is not None and not s.ws.closed]

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=(t.PROTOCOL,))
        await ws.prepare(request)
        self.open += 1
        self.connections += 1
        self.max_open = max(self.max_open, self.open)
        sess: _LSSession | None = None
        try:
            async for msg in ws:
                lines = msg.data.split("\r\n")
                self.requests.append(msg.data)
                name, queries = lines[0], [{k: v[0] for k, v in parse_qs(ln).items()} for ln in lines[1:]]
                if name == "wsok":
                    await ws.send_str("WSOK")
                elif name == "create_session":
                    q = queries[0]
                    if (q.get("LS_user"), q.get("LS_password")) != (self.user, self.password):
                        await ws.send_str("CONERR,1,User/password%20check%20failed")
                        await ws.close()
                        break
                    if "LS_old_session" in q:
                        self.old_sessions.append(q["LS_old_session"])
                    self._n += 1
                    sess = _LSSession(f"S{self._n}", ws)
                    self.sessions[sess.sid] = sess
                    await ws.send_str(f"CONOK,{sess.sid},50000,{self.keepalive_ms},*\r\nSERVNAME,Fake\r\n")
                elif name == "bind_session":
                    sess = self.sessions[queries[0]["LS_session"]]
                    sess.ws = ws
                    await ws.send_str(f"CONOK,{sess.sid},50000,{self.keepalive_ms},*")
                elif name == "control" and sess is not None:
                    out = []
                    for q in queries:
                        sub = int(q.get("LS_subId", "0"))
                        if q["LS_op"] == "add":
                            schema = q["LS_schema"].split(" ")
                            if q["LS_group"].startswith("MARKET:BAD"):
                                out.append(f"REQERR,{q['LS_reqId']},21,Bad%20item")
                                continue
                            sess.subs[sub] = (q["LS_group"], schema)
                            out.append(f"SUBOK,{sub},1,{len(schema)}")
                            out.append(f"U,{sub},1,{self.snapshot(sess, sub)}")
                            out.append(f"EOS,{sub},1")
                        elif q["LS_op"] == "delete":
                            sess.subs.pop(sub, None)
                            out.append(f"UNSUB,{sub}")
                        elif q["LS_op"] == "destroy":
                            await ws.close()
                    if out and not ws.closed:
                        await ws.send_str("\r\n".join(out) + "\r\n")
        finally:
            self.open -= 1
            if sess is not None and sess.ws is ws:
                sess.ws = None
        return ws

    def snapshot(self, sess: _LSSession, sub: int) -> str:
        sess.ticks[sub] += 1
        return f"{self.bid(sess, sub)}|1.5|12:30:45|TRADEABLE"

    @staticmethod
    def bid(sess: _LSSession, sub: int) -> str:
        return f"1.{sess.ticks[sub]:04d}"

    async def pump(self) -> None:
        last_probe = 0.0
        while True:
            await asyncio.sleep(self.pump_s)
            probe = time.monotonic() - last_probe >= self.keepalive_ms / 1000
            if probe:
                last_probe = time.monotonic()
            for sess in self.live():
                if sess.sid in self.silent:
                    continue
                lines = []
                for sub in list(sess.subs):
                    sess.ticks[sub] += 1
                    lines.append(f"U,{sub},1,{self.bid(sess, sub)}|^2|")
                if probe:
                    lines.append("PROBE")
                if lines:
                    assert sess.ws is not None
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await sess.ws.send_str("\r\n".join(lines) + "\r\n")

    async def drop(self, sessions: list[_LSSession]) -> None:
        for s in sessions:
            if s.ws is not None:
                await s.ws.close()


@dataclass
class Sink:
    """What the pool delivered: per item the latest fields and the count of updates."""

    fields: dict[str, dict[str, str | None]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    disconnects: list[str] = field(default_factory=list)

    def on_update(self, item: str, fields: dict[str, str | None]) -> None:
        self.fields[item] = fields
        self.counts[item] += 1

    def on_connect(self, session: TlcpSession) -> None:
        self.connects += 1

    def on_disconnect(self, session: TlcpSession, why: str) -> None:
        self.disconnects.append(why)


def _pool(url: str, sink: Sink, password: str | Callable[[], Awaitable[str]] = "CST-c|XST-x", **kw: Any) -> TlcpPool:
    kw.setdefault("keepalive_ms", 150)
    return TlcpPool(
        url,
        "ABC123",
        password,
        on_update=sink.on_update,
        on_connect=sink.on_connect,
        on_disconnect=sink.on_disconnect,
        budget=ConnectBudget(1000, 1.0),
        backoff_base_s=0.02,
        backoff_cap_s=0.1,
        **kw,
    )


EPICS = [f"CS.D.PAIR{i:03d}.CFD.IP" for i in range(100)]
ITEMS = [ig.market_item(e) for e in EPICS]


async def test_pool_packs_100_items_into_at_most_40_connections_and_survives_drops() -> None:
    # A 2 s watchdog: this test counts connects and drops exactly, and 40 sessions on a loaded machine
    # can go quiet for the default 0.3 s (the watchdog has tests of its own)
    fake = FakeLS(keepalive_ms=1000)
    sink = Sink()
    async with serve_app(fake.app()) as url:
        # 100 items would need 50 sessions
        pool = _pool(url, sink, max_connections=40, items_per_session=2, keepalive_ms=1000)
        try:
            await pool.subscribe(ITEMS, ig.MARKET_FIELDS)
            await until(lambda: all(sink.counts[i] >= 3 for i in ITEMS), 10.0)
            assert len(pool.sessions) == 40 and fake.max_open <= 40 and fake.open == 40
            assert pool.stats["over_capacity"] == 20 and pool.stats["max_open_connections"] <= 40
            assert sorted(len(s) for s in pool.sessions) == [2] * 20 + [3] * 20
            # MERGE: the pump sends only BID; the other fields keep their snapshot values
            dec = ig.IGDecoder()
            q = dec.market_quote(EPICS[7], sink.fields[ITEMS[7]], now_ms=ms(2024, 7, 1, 11, 31))
            assert q is not None and q.ask == 1.5 and q.bid > 1.0002 and q.time_ms == ms(2024, 7, 1, 11, 30, 45)
            assert sink.connects == 40

            # the server drops 6 sessions: they reconnect (never above 40 open) and resubscribe
            dropped = fake.live()[:6]
            dropped_ids = {s.sid for s in dropped}
            await fake.drop(dropped)
            await until(lambda: sink.connects >= 46 and fake.open == 40, 10.0)
            mark = dict(sink.counts)
            await until(lambda: all(sink.counts[i] >= mark[i] + 2 for i in ITEMS), 10.0)
            assert fake.max_open <= 40 and pool.stats["max_open_connections"] <= 40
            assert len(sink.disconnects) == 6 and all("closed by the server" in w for w in sink.disconnects)
            assert dropped_ids <= set(fake.old_sessions)  # the new sessions named the ones they replace
            assert pool.stats["connects"] == 46 and pool.stats.get("bad_update", 0) == 0

            # unsubscribing a whole session's items closes it and frees its connection
            victim = pool.sessions[-1]
            await pool.unsubscribe(list(victim.items))
            assert victim not in pool.sessions
            await until(lambda: fake.open == 39)
        finally:
            await pool.close()
        await until(lambda: fake.open == 0)
        assert fake.max_open <= 40


async def test_pool_never_opens_more_than_the_limit_while_everything_reconnects() -> None:
    fake = FakeLS()
    sink = Sink()
    async with serve_app(fake.app()) as url:
        pool = _pool(url, sink, max_connections=5, items_per_session=4)
        try:
            await pool.subscribe(ITEMS[:30], ig.MARKET_FIELDS)
            await until(lambda: all(sink.counts[i] >= 2 for i in ITEMS[:30]))
            assert len(pool.sessions) == 5 and fake.max_open == 5
            for _ in range(3):
                await fake.drop(fake.live())
                await until(lambda: fake.open == 5 and len(fake.live()) == 5, 10.0)
            mark = dict(sink.counts)
            await until(lambda: all(sink.counts[i] >= mark[i] + 2 for i in ITEMS[:30]))
            assert fake.max_open == 5 and pool.gate.max_open == 5
            assert fake.connections >= 20
        finally:
            await pool.close()


async def test_a_silent_connection_is_dropped_by_the_watchdog_and_resubscribed() -> None:
    fake = FakeLS(keepalive_ms=100)
    sink = Sink()
    async with serve_app(fake.app()) as url:
        pool = _pool(url, sink, max_connections=1, items_per_session=10, keepalive_ms=100)
        try:
            await pool.subscribe(ITEMS[:3], ig.MARKET_FIELDS)
            await until(lambda: sink.counts[ITEMS[0]] >= 2)
            fake.silent.add(fake.live()[0].sid)  # no updates and no PROBE from now on
            t0 = time.monotonic()
            await until(lambda: pool.stats["stale_drops"] == 1, 3.0)
            assert 0.15 <= time.monotonic() - t0 < 1.5  # twice the 100 ms keepalive, give or take a tick
            mark = sink.counts[ITEMS[0]]
            await until(lambda: sink.counts[ITEMS[0]] >= mark + 2)
            assert pool.stats["connects"] == 2 and any("stale" in w for w in sink.disconnects)
        finally:
            await pool.close()


async def test_loop_rebinds_the_same_session_without_resubscribing() -> None:
    fake = FakeLS()
    sink = Sink()
    async with serve_app(fake.app()) as url:
        pool = _pool(url, sink, max_connections=1, items_per_session=10)
        try:
            await pool.subscribe(ITEMS[:2], ig.MARKET_FIELDS)
            await until(lambda: sink.counts[ITEMS[1]] >= 2)
            sess = fake.live()[0]
            assert sess.ws is not None
            await sess.ws.send_str("LOOP,0\r\n")
            await until(lambda: any(r.startswith("bind_session") for r in fake.requests))
            mark = sink.counts[ITEMS[1]]
            await until(lambda: sink.counts[ITEMS[1]] >= mark + 3)
            adds = [r for r in fake.requests if "LS_op=add" in r]
            assert len(adds) == 1 and len(fake.sessions) == 1  # same session, subscribed once
            assert pool.stats["binds"] == 1 and pool.stats["connects"] == 1 and fake.max_open == 1
            assert sink.fields[ITEMS[1]]["OFFER"] == "1.5"  # the item state survived the rebind
        finally:
            await pool.close()


async def test_conerr_retries_with_a_fresh_password_and_reqerr_marks_the_item() -> None:
    fake = FakeLS()
    sink = Sink()
    calls: list[int] = []

    async def password() -> str:  # first the REST login fails, then it gives stale tokens, then fresh ones
        calls.append(1)
        if len(calls) == 1:
            raise VenueError(503, b"IG is down", "http://ig/session")
        return "CST-old|XST-old" if len(calls) == 2 else fake.password

    async with serve_app(fake.app()) as url:
        pool = _pool(url, sink, password=password, max_connections=2, items_per_session=10)
        try:
            await pool.subscribe([ITEMS[0], "MARKET:BAD.EPIC", ITEMS[1]], ig.MARKET_FIELDS)
            await until(lambda: sink.counts[ITEMS[0]] >= 2 and sink.counts[ITEMS[1]] >= 2)
            assert len(calls) == 3 and pool.stats["conerr"] == 1 and pool.sessions[0].drops["no password"] == 1
            assert pool.failed == {"MARKET:BAD.EPIC": (21, "Bad item")}
            assert "MARKET:BAD.EPIC" not in sink.counts
            # control requests went out batched: one message for the three adds
            adds = [r for r in fake.requests if "LS_op=add" in r]
            assert len(adds) == 1 and adds[0].count("LS_op=add") == 3
        finally:
            await pool.close()


async def test_sessions_sharing_a_gate_wait_for_a_free_connection() -> None:
    fake = FakeLS()
    sink = Sink()
    gate = ConnectionGate(2)
    async with serve_app(fake.app()) as url:
        sessions = [
            TlcpSession(
                url,
                "ABC123",
                "CST-c|XST-x",
                sink.on_update,
                name=f"s{i}",
                gate=gate,
                keepalive_ms=150,
                backoff_base_s=0.02,
            )
            for i in range(3)
        ]
        try:
            for i, s in enumerate(sessions):
                await s.subscribe([ITEMS[i]], ig.MARKET_FIELDS)
                s.start()
            await until(lambda: sum(s.connected for s in sessions) == 2)
            await asyncio.sleep(0.2)
            assert fake.open == 2 and gate.waits >= 1
            waiting = next(s for s in sessions if not s.connected)
            await next(s for s in sessions if s.connected).close()
            await until(lambda: waiting.connected and sink.counts[ITEMS[sessions.index(waiting)]] >= 2)
            assert fake.max_open == 2 and gate.max_open == 2
        finally:
            for s in sessions:
                await s.close()
        await until(lambda: fake.open == 0)
        assert gate.open == 0 and gate.held == 0


async def test_strict_pool_refuses_items_that_do_not_fit_before_subscribing_any() -> None:
    fake = FakeLS()
    sink = Sink()
    async with serve_app(fake.app()) as url:
        pool = _pool(url, sink, max_connections=2, items_per_session=3, strict=True)
        try:
            await pool.subscribe(ITEMS[:4], ig.MARKET_FIELDS)
            with pytest.raises(PoolFull, match="3 items do not fit: 2 places"):
                await pool.subscribe(ITEMS[4:7], ig.MARKET_FIELDS)
            assert pool.items == ITEMS[:4] and sorted(len(s) for s in pool.sessions) == [1, 3]
            await pool.subscribe(ITEMS[4:6], ig.MARKET_FIELDS)
            await until(lambda: all(sink.counts[i] >= 2 for i in ITEMS[:6]))
            assert pool.stats["over_capacity"] == 0 and fake.max_open == 2
        finally:
            await pool.close()


# --- against deltafeed's IG replica -------------------------------------------------------------


async def test_history_and_streaming_against_the_ig_replica(tmp_path: Any) -> None:
    """IGSession → IGHistory (bid candles equal the replica's tape) → TlcpPool with the session's
    credentials (quotes and closed CHART candles equal the tape), within the replica's session limit."""
    from deltafeed.venues.ig.replica import IGReplica

    eur, jpy = "CS.D.EURUSD.CFD.IP", "CS.D.USDJPY.CFD.IP"
    start = ms(2026, 3, 4, 10, 2, 30)  # a Wednesday: the FX market is open
    r = IGReplica(
        epics=(eur, jpy),
        rate=5.0,
        speed=60.0,
        history_ms=3_600_000,
        start_ms=start,
        tape=str(tmp_path / "tape.csv"),
        api_key=API_KEY,
        username=USER,
        password=PASSWORD,
        max_connections=2,
        keepalive_ms=200,
    )
    await r.start()
    session = IGSession(r.rest_url, API_KEY, USER, PASSWORD, rate_per_minute=6000)
    hist = IGHistory(session)
    quotes: list[Quote] = []
    charts: list[Candle] = []
    dec = ig.IGDecoder()  # UK local time, as IG documents and the replica sends

    def on_update(item: str, fields: dict[str, str | None]) -> None:
        kind, epic, _ = ig.parse_item(item)
        if kind == "MARKET" and epic == eur:
            q = dec.market_quote(epic, fields, r.clock.now_ms())
            if q is not None:
                quotes.append(q)
        elif kind == "CHART":
            c = dec.chart_candles(epic, fields).get("bid")
            if c is not None and c.closed:
                charts.append(c)

    pool: TlcpPool | None = None
    try:
        now = r.clock.now_ms()
        got = await hist.candles_all_sides(eur, "1m", start - 20 * 60_000, now, now_ms=now)
        after = r.clock.now_ms()  # the replica's market runs on: a minute may close during the fetch
        assert len(got["bid"]) >= 18 and hist.allowance[0] == r.allowance - r.stats["allowance_used"]
        account, _ = await session.ls_credentials()
        assert account == r.account_id and session.lightstreamer_endpoint == r.url
        pool = TlcpPool(
            session.lightstreamer_endpoint,
            account,
            session.ls_password_fresh,
            max_connections=2,
            items_per_session=2,
            on_update=on_update,
            keepalive_ms=200,
            budget=ConnectBudget(100, 1.0),
            backoff_base_s=0.05,
        )
        await pool.subscribe([ig.market_item(eur), ig.market_item(jpy)], ig.MARKET_FIELDS)
        await pool.subscribe([ig.chart_item(eur)], ig.CHART_FIELDS)
        await until(lambda: len(quotes) >= 50 and len(charts) >= 2, 10.0)
        assert pool.stats["sessions"] == 2 and pool.stats["refused"] == 0 and not dec.errors
        assert r.stats["max_concurrent_sessions"] <= 2 and r.stats["rejected_sessions"] == 0
    finally:
        if pool is not None:
            await pool.close()
        await hist.close()
        await r.stop()

    rows = [line.split(",") for line in (tmp_path / "tape.csv").read_text().splitlines()[1:]]
    tape = [(int(tm), float(b), float(a)) for sym, tm, b, a in rows if sym == eur]
    minutes: dict[int, list[tuple[int, float, float]]] = {}
    for row in tape:
        minutes.setdefault(row[0] - row[0] % 60_000, []).append(row)

    def expected(t0: int) -> tuple[float, float, float, float, int]:
        qs = minutes[t0]
        return qs[0][1], max(q[1] for q in qs), min(q[1] for q in qs), qs[-1][1], len(qs)

    for c in got["bid"]:
        assert (c.open, c.high, c.low, c.close, c.trades) == expected(c.open_time)
    got_times = [c.open_time for c in got["bid"]]
    closed_by = [m for m in sorted(minutes) if start - 20 * 60_000 <= m and m + 60_000 <= after]
    surely = [m for m in closed_by if m + 60_000 <= now]
    # Every minute closed when asked, and at most those that closed before the answer: no hole.
    assert got_times[: len(surely)] == surely and got_times == closed_by[: len(got_times)]
    assert [(c.open_time, c.close) for c in got["mid"]] == [
        (m, pytest.approx((minutes[m][-1][1] + minutes[m][-1][2]) / 2)) for m in (c.open_time for c in got["bid"])
    ]
    seen = {(t // 1000, b, a) for t, b, a in tape}
    assert all((q.time_ms // 1000, q.bid, q.ask) in seen for q in quotes)
    for c in charts:
        assert (c.open, c.high, c.low, c.close, c.trades) == expected(c.open_time)


async def test_the_ig_replica_refuses_subscriptions_past_its_per_connection_cap() -> None:
    """IG allows 40 subscriptions per connection; with the replica's cap lowered to 2, a pool packing
    2 items per session subscribes all three items on two sessions, and one packing 3 per session has
    its third item refused (REQERR), as IG refuses it."""
    from deltafeed.venues.ig.replica import IGReplica

    epics = ("CS.D.EURUSD.CFD.IP", "CS.D.USDJPY.CFD.IP", "CS.D.GBPUSD.CFD.IP")
    items = [ig.market_item(e) for e in epics]
    r = IGReplica(
        epics=epics,
        rate=5.0,
        speed=60.0,
        history_ms=600_000,
        start_ms=ms(2026, 3, 4, 10, 2, 30),
        api_key=API_KEY,
        username=USER,
        password=PASSWORD,
        max_connections=4,
        keepalive_ms=200,
    )
    r.per_connection = 2
    await r.start()
    session = IGSession(r.rest_url, API_KEY, USER, PASSWORD, rate_per_minute=6000)
    try:
        account, _ = await session.ls_credentials()
        results = []
        for per_session in (2, 3):
            sink = Sink()
            pool = TlcpPool(
                session.lightstreamer_endpoint,
                account,
                session.ls_password_fresh,
                max_connections=2,
                items_per_session=per_session,
                on_update=sink.on_update,
                keepalive_ms=200,
                budget=ConnectBudget(100, 1.0),
                backoff_base_s=0.05,
            )
            try:
                refused = r.stats.get("limit_refusals", 0)
                await pool.subscribe(items, ig.MARKET_FIELDS)

                def settled(sink: Sink = sink, refused: int = refused) -> bool:
                    # every item either streaming or refused
                    got = sum(sink.counts[i] > 0 for i in items)
                    return got + r.stats.get("limit_refusals", 0) - refused == 3

                await until(settled, 10.0)
                results.append((len(pool.sessions), pool.stats["refused"], r.stats.get("limit_refusals", 0) - refused))
            finally:
                await pool.close()
    finally:
        await session.close()
        await r.stop()
    assert results == [(2, 0, 0), (1, 1, 1)], results
    assert r.stats["most_subscriptions"] == 2
