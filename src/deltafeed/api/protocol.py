"""The messages the server sends its WebSocket consumers, shared by the engine (which publishes
them), the hub (which fans them out) and the client (which decodes them); and :class:`LiveSink`,
what the engine publishes into (the hub is one).

Every message is ``{"type", "instrument", "timestamp", "data"}``; the tag field puts "type" first.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from deltafeed.model import Candle, Trade


class CandleData(msgspec.Struct, gc=False):
    timeframe: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int
    closed: bool  # its interval is over
    #: ``forming``, ``provisional`` or ``final`` (see ``model.Candle.state``); always sent. The default
    #: only lets a client read a server from before states existed.
    state: str = ""


class TradeData(msgspec.Struct, gc=False):
    id: int
    price: float
    qty: float
    buyer_maker: bool


class PriceData(msgspec.Struct, gc=False):
    price: float


class HeartbeatData(msgspec.Struct):
    clients: int
    instruments: list[str]


class CandleMsg(msgspec.Struct, tag_field="type", tag="candle", gc=False):
    """An open candle's update, or a closed candle; ``timestamp`` is its open time."""

    instrument: str
    timestamp: int
    data: CandleData


class TradeMsg(msgspec.Struct, tag_field="type", tag="trade", gc=False):
    """One trade; ``timestamp`` is the venue's trade time."""

    instrument: str
    timestamp: int
    data: TradeData


class PriceMsg(msgspec.Struct, tag_field="type", tag="price_update", gc=False):
    """The latest price (at most one per instrument and engine tick)."""

    instrument: str
    timestamp: int
    data: PriceData


class HeartbeatMsg(msgspec.Struct, tag_field="type", tag="heartbeat"):
    """Sent to every client every ``heartbeat_s``; ``timestamp`` is the server's wall clock."""

    instrument: None
    timestamp: int
    data: HeartbeatData


class SwitchData(msgspec.Struct):
    since_ms: int  # the old source's last data
    source_from: str = msgspec.field(name="from")
    source_to: str = msgspec.field(name="to")
    spanning: dict[str, int] = msgspec.field(default_factory=dict)  # timeframe -> spanning candle's open time


class SwitchMsg(msgspec.Struct, tag_field="type", tag="switch"):
    """A logical instrument moved to its other source (failover); sent to every client watching its
    candles. ``timestamp`` is when, by the venue's clock; the candles from each timeframe's spanning
    one on follow from the new source."""

    instrument: str
    timestamp: int
    data: SwitchData


class BookSnapshotData(msgspec.Struct, gc=False):
    """A whole book to ``depth`` levels per side, best first; empty and ``in_sync`` false while the
    book is out of sync (never shown as valid then). Deltas that follow name this ``sequence`` as ``prev``."""

    sequence: int
    in_sync: bool
    depth: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


class BookDeltaData(msgspec.Struct, gc=False):
    """Levels of the book's top ``depth`` that changed (size 0: gone), after the message whose
    ``sequence`` is ``prev`` on this subscription (a consumer that saw another one resubscribes)."""

    sequence: int
    prev: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


class BookSnapshotMsg(msgspec.Struct, tag_field="type", tag="book_snapshot", gc=False):
    """A book subscription's first message, and again whenever the book was resynchronised or the
    client was too slow for the deltas; ``timestamp`` is the book's time (venue ms)."""

    instrument: str
    timestamp: int
    data: BookSnapshotData


class BookDeltaMsg(msgspec.Struct, tag_field="type", tag="book_delta", gc=False):
    """Changes to a subscribed book; ``timestamp`` is the book's time (venue ms)."""

    instrument: str
    timestamp: int
    data: BookDeltaData


class Subscribed(msgspec.Struct, tag_field="type", tag="subscribed", omit_defaults=True):
    """The answer to a subscribe op; ``snapshot`` candle messages follow it, then live data.
    ``final`` is sent (true) only for a final-only subscription."""

    op: str
    instrument: str
    timeframe: str | None
    snapshot: int
    final: bool = False


class Unsubscribed(msgspec.Struct, tag_field="type", tag="unsubscribed"):
    op: str
    instrument: str
    timeframe: str | None = None


class ErrorMsg(msgspec.Struct, tag_field="type", tag="error"):
    message: str


class PongMsg(msgspec.Struct, tag_field="type", tag="pong"):
    """The answer to a client's ``{"type":"ping"}``; ``timestamp`` is the server's wall clock."""

    timestamp: int


#: Everything a consumer may receive, for ``msgspec.json.Decoder(ServerMessage)``.
ServerMessage = (
    CandleMsg
    | TradeMsg
    | PriceMsg
    | HeartbeatMsg
    | SwitchMsg
    | BookSnapshotMsg
    | BookDeltaMsg
    | Subscribed
    | Unsubscribed
    | ErrorMsg
    | PongMsg
)


class LiveSink(Protocol):
    """Where the engine publishes live data for its consumers (the API's :class:`~deltafeed.api.hub.Hub`)."""

    def candle(self, instrument: str, timeframe: str, candle: Candle) -> None:
        """A candle of a series changed (forming, closed, or corrected)."""
        ...

    def trade(self, instrument: str, trade: Trade) -> None:
        """A trade of a series whose trades someone wants (see :meth:`wants_trades`)."""
        ...

    def price(self, instrument: str, time_ms: int, price: float) -> None:
        """The latest price of a series."""
        ...

    def switch(self, instrument: str, at_ms: int, data: SwitchData) -> None:
        """A logical series moved to its other source (failover)."""
        ...

    def wants_trades(self, instrument: str) -> bool:
        """Whether a consumer subscribed to the trades of ``instrument``."""
        ...

    async def close(self) -> None:
        """Say goodbye to every consumer (the engine stops)."""
        ...
