"""The HTTP API's JSON documents as msgspec types: the handlers build their answers from them, and
the OpenAPI document (:mod:`deltafeed.api.openapi`) derives its schemas from them with
``msgspec.json.schema_components``, so the description cannot drift from what is served.

Field order is the order of the keys in the JSON sent. Docstrings and ``Meta`` descriptions become
the schemas' descriptions.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

StateName = Literal["forming", "provisional", "final"]
State = Annotated[
    StateName,
    Meta(
        title="State",
        description="forming: the interval is not over; provisional: closed, not verified yet (built while "
        "the stream was down or behind a hole, or waiting for a repair); may still be repaired and is "
        "then published again; final: deltafeed vouches for it (unbroken venue sequence, the venue's "
        "own closed candle, or the venue's history).",
    ),
]
EpochMs = Annotated[int, Meta(description="Epoch milliseconds (UTC)")]

#: One candle row: ``[open_time, open, high, low, close, volume, trades, state]``.
CandleRow = tuple[EpochMs, float, float, float, float, float, int, State]


class Error(msgspec.Struct):
    """Every error: a message naming the problem and the fix."""

    error: str


class Health(msgspec.Struct, omit_defaults=True):
    """``ok`` (200), or ``degraded`` (503) with the reasons."""

    status: Literal["ok", "degraded"]
    reasons: list[str] = msgspec.field(default_factory=list)


class Liveness(msgspec.Struct):
    """``alive`` (200): the process answers (``GET /livez``)."""

    status: Literal["alive"] = "alive"


class Readiness(msgspec.Struct, omit_defaults=True):
    """``ready`` (200), or ``not ready`` (503) with the reasons: bootstrapping, a venue disconnected,
    the cold store not writable (``GET /readyz``)."""

    status: Literal["ready", "not ready"]
    reasons: list[str] = msgspec.field(default_factory=list)


class SpanningCandle(msgspec.Struct):
    """A candle that spans a failover switch of a logical instrument: it holds the old source's last
    data; from it on the series comes from the new source."""

    open_time: Annotated[int, Meta(description="The spanning candle's open time (ms)")]
    since_ms: Annotated[int, Meta(description="The old source's last data (ms)")]
    at_ms: Annotated[int, Meta(description="When the switch was made (ms)")]
    source_from: Annotated[str, Meta(examples=["oanda:EUR_USD"])] = msgspec.field(name="from")
    source_to: Annotated[str, Meta(examples=["ig:CS.D.EURUSD.CFD.IP"])] = msgspec.field(name="to")


class Candles(msgspec.Struct):
    """Candles of one series, oldest first, each with its state; the one still forming last."""

    instrument: Annotated[str, Meta(examples=["binance:BTCUSDT"])]
    timeframe: Annotated[str, Meta(examples=["1m"])]
    columns: Annotated[
        list[str],
        Meta(
            description="Names of a row's columns",
            examples=[["open_time", "open", "high", "low", "close", "volume", "trades", "state"]],
        ),
    ]
    candles: Annotated[
        list[CandleRow],
        Meta(
            description="Oldest first: [open_time epoch ms, open, high, low, close, volume, trades, state]. "
            "Prices and volume without float noise."
        ),
    ]
    forming: Annotated[
        list[int],
        Meta(
            description="Open times of the candles in this response still forming: the newest one, last, "
            "when the range reaches now; and, rarely, one the venue never closed, waiting for a repair."
        ),
    ]
    provisional: Annotated[
        list[int],
        Meta(description="Open times of the provisional candles in this response. Empty with final=true."),
    ]
    switches: Annotated[
        list[SpanningCandle],
        Meta(
            description="For a logical instrument (a primary and a standby source): the candles in this "
            "response that span a failover switch. Empty otherwise."
        ),
    ]


class InstrumentInfo(msgspec.Struct):
    """One series this collector serves."""

    name: Annotated[str, Meta(description="The stored name (VENUE:SYMBOL, @side for a price side)")]
    venue: str
    symbol: str
    unified: Annotated[
        str | None, Meta(description="ccxt's unified symbol (BTC/USDT); null when the symbol names no pair")
    ]
    aliases: list[str]
    price: Annotated[str | None, Meta(description="trade, or mid/bid/ask for forex")]
    streaming: bool


class Instruments(msgspec.Struct):
    """The instruments and timeframes this collector serves."""

    instruments: list[InstrumentInfo]
    timeframes: list[str]


class ControlRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Instruments to act on; no body, or instruments absent or null, means all."""

    instruments: Annotated[list[str] | None, Meta(examples=[["binance:BTCUSDT"]])] = None


class Streaming(msgspec.Struct):
    """The instruments streaming now."""

    streaming: list[str]


class SwitchInfo(msgspec.Struct):
    """A failover switch of a logical instrument (the engine's ``SwitchDoc`` as the API sends it)."""

    since_ms: Annotated[int, Meta(description="The old source's last data (ms)")]
    at_ms: Annotated[int, Meta(description="When the switch was made (ms)")]
    source_from: Annotated[str, Meta(examples=["oanda:EUR_USD"])] = msgspec.field(name="from")
    source_to: Annotated[str, Meta(examples=["ig:CS.D.EURUSD.CFD.IP"])] = msgspec.field(name="to")
    spanning: Annotated[dict[str, int], Meta(description="timeframe -> open time of its spanning candle")] = (
        msgspec.field(default_factory=dict)
    )


class Switches(msgspec.Struct):
    """Failover switches of a logical instrument, oldest first: the source left and the one continued
    from, the old source's last data (since_ms), and per timeframe the candle spanning the switch."""

    instrument: str
    switches: list[SwitchInfo]


class MissingTicks(msgspec.Struct):
    """A span of ticks the stream lost (exclusive of the ticks on either side), and why."""

    since: int
    until: int
    why: str


class Trades(msgspec.Struct):
    """Raw trades (or quotes) the stream delivered, oldest first, and the spans missing."""

    instrument: str
    trade_columns: Annotated[list[str], Meta(examples=[["time", "id", "price", "amount", "side"]])]
    trades: list[tuple[EpochMs, int, float, float, Literal["buy", "sell"]]]
    quote_columns: Annotated[list[str], Meta(examples=[["time", "seq", "bid", "ask"]])]
    quotes: list[tuple[EpochMs, int, float, float]]
    missing: list[MissingTicks]
    kept_from: Annotated[int | None, Meta(description="The oldest tick kept (retention, or when recording began)")]
    next_since: Annotated[int | None, Meta(description="Where to continue when limit cut the answer short")]


BookLevel = tuple[Annotated[float, Meta(description="price")], Annotated[float, Meta(description="size")]]


class Book(msgspec.Struct):
    """An order book, best levels first; empty with ``in_sync`` false while it is out of sync (never
    shown as valid then)."""

    instrument: str
    bids: list[BookLevel]
    asks: list[BookLevel]
    in_sync: bool
    sequence: Annotated[int, Meta(description="deltafeed's number of the book's state: +1 per change applied")]
    venue_seq: Annotated[
        int | None, Meta(description="The venue's sequence key of the last message applied (its update id, ...)")
    ]
    time: Annotated[EpochMs, Meta(description="The book's time: the venue's time of the last message applied")]
