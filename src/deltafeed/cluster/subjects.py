"""The cluster's contract on NATS JetStream: subject names, stream and key-value bucket names, and
the messages collectors publish and every other role reads.

Subjects are ``deltafeed.<cluster>.<kind>.<venue>.<symbol token>[.<tf>]``:

- ``kind`` is ``candles`` (with the timeframe as the last token), ``trades``, ``books`` or
  ``switches`` (those three have no timeframe);
- ``venue`` is the venue's name (``binance``), ``symbol token`` the rest of the series key
  (``BTCUSDT``, ``EUR_USD@bid``) with every character outside ``A-Z a-z 0-9 _ -`` written as
  ``%XX`` per UTF-8 byte, so dots, slashes, spaces, ``*`` and ``>`` (which NATS gives meaning)
  survive: ``BTC/USDT`` is ``BTC%2FUSDT``, ``EUR_USD@bid`` is ``EUR_USD%40bid``.

Each cluster has one stream (:func:`stream_name`) holding all its subjects, with a per-subject
message limit and an age limit, so it doubles as a replayable hot tier; and key-value buckets
(:func:`bucket_name`) for leases, collectors and venue budgets. Several clusters share one NATS.

A candle message is the JSON of :class:`CandleMsg` (our :class:`Candle` with its series and
timeframe) with a ``Nats-Msg-Id`` header of ``series|tf|open_time|revision``, the revision a digest
of the candle's values and state: the same candle published twice (a retry, two collectors across a
handover) is stored once, as our upserts store it once, while a correction or a provisional candle
becoming final is a new message. A subject's messages are in publication order; a reader keeps the
latest per open time, except that a candle that was final is replaced only by another final one.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any
from urllib.parse import unquote

import msgspec

from deltafeed.model import FINAL, Candle, Switch, Trade, cluster_name

ROOT = "deltafeed"
CANDLES, TRADES, BOOKS, SWITCHES = "candles", "trades", "books", "switches"
KINDS = (CANDLES, TRADES, BOOKS, SWITCHES)
#: The key-value buckets of a cluster: instrument leases, live collectors, venue budgets.
LEASES, COLLECTORS, BUDGETS = "leases", "collectors", "budgets"
BUCKETS = (LEASES, COLLECTORS, BUDGETS)

MSG_ID = "Nats-Msg-Id"
#: Messages JetStream keeps per subject (per series and timeframe for candles): the hot tier's depth.
MAX_MSGS_PER_SUBJECT = 20_000
#: How long the stream keeps a message at most, in seconds.
MAX_AGE_S = 2 * 86_400
#: How long JetStream remembers a ``Nats-Msg-Id`` to drop a repeat, in seconds.
DUPLICATE_WINDOW_S = 120

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def token(text: str) -> str:
    """``text`` as one subject token: characters outside ``A-Za-z0-9_-`` as ``%XX`` per UTF-8 byte."""
    out = []
    for ch in text:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out)


def untoken(tok: str) -> str:
    """The text :func:`token` wrote as ``tok``."""
    return unquote(tok, errors="strict")


def subject(cluster: str, kind: str, series: str, tf: str | None = None) -> str:
    """The subject of series ``series`` (``venue:SYMBOL[@side]``) for ``kind`` (and timeframe
    ``tf``, which candles need and the other kinds do not have)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    if (tf is None) == (kind == CANDLES):
        raise ValueError("candles have a timeframe, other kinds none")
    venue, sep, symbol = series.partition(":")
    if not sep or not venue.isalnum():
        raise ValueError(f"not a series key: {series!r}")
    base = f"{ROOT}.{cluster}.{kind}.{venue}.{token(symbol)}"
    return base if tf is None else f"{base}.{tf}"


def parse_subject(subj: str) -> tuple[str, str, str, str | None]:
    """``(cluster, kind, series, tf)`` of a subject :func:`subject` made; ValueError otherwise."""
    parts = subj.split(".")
    if (
        len(parts) not in (5, 6)
        or parts[0] != ROOT
        or parts[2] not in KINDS
        or (len(parts) == 6) != (parts[2] == CANDLES)
    ):
        raise ValueError(f"not a deltafeed subject: {subj!r}")
    return parts[1], parts[2], f"{parts[3]}:{untoken(parts[4])}", parts[5] if len(parts) == 6 else None


def filter_subject(cluster: str, kind: str | None = None) -> str:
    """The wildcard for every subject of ``cluster`` (of one ``kind`` when given)."""
    return f"{ROOT}.{cluster}.>" if kind is None else f"{ROOT}.{cluster}.{kind}.>"


def stream_name(cluster: str) -> str:
    """The JetStream stream holding all of ``cluster``'s subjects."""
    return f"DELTAFEED_{cluster}"


def bucket_name(cluster: str, what: str) -> str:
    """The key-value bucket ``what`` (one of :data:`BUCKETS`) of ``cluster``."""
    if what not in BUCKETS:
        raise ValueError(f"unknown bucket {what!r}")
    return f"deltafeed_{cluster}_{what}"


def kv_key(series: str) -> str:
    """A series key as a key-value key (``binance.BTCUSDT``, ``binance.BTC=2FUSDT``): the symbol's
    token with ``=`` for ``%``, which keys do not allow."""
    venue, _, symbol = series.partition(":")
    return f"{venue}.{token(symbol).replace('%', '=')}"


def series_of_key(key: str) -> str:
    """The series key :func:`kv_key` wrote as ``key``."""
    venue, _, tok = key.partition(".")
    return f"{venue}:{untoken(tok.replace('=', '%'))}"


class CandleMsg(msgspec.Struct, frozen=True):
    """One version of a candle, as collectors publish it (JSON): the series, the timeframe and our
    :class:`Candle` (``closed`` and ``final`` give its state: forming, provisional or final)."""

    series: str
    tf: str
    candle: Candle
    #: The collector that published it.
    source: str = ""
    #: When it was published, ms since the epoch (wall clock), for end-to-end latency.
    sent_ms: int = 0

    @property
    def open_time(self) -> int:
        return self.candle.open_time

    @property
    def state(self) -> str:
        return self.candle.state

    @property
    def revision(self) -> str:
        """A digest of the candle's values and state: equal candles have equal revisions."""
        text = repr((*self.candle.row(), self.state))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    @property
    def msg_id(self) -> str:
        return f"{self.series}|{self.tf}|{self.candle.open_time}|{self.revision}"


def candle_msg(series: str, tf: str, c: Candle, *, source: str = "", sent_ms: int = 0) -> CandleMsg:
    """A message of a copy of ``c`` (the engine goes on changing a forming candle in place)."""
    return CandleMsg(series, tf, msgspec.structs.replace(c), source, sent_ms)


class SwitchMsg(msgspec.Struct, frozen=True):
    """A failover switch of a logical series, as published on its ``switches`` subject."""

    switch: Switch
    source: str = ""
    sent_ms: int = 0

    @property
    def msg_id(self) -> str:
        s = self.switch
        return f"{s.instrument}|switch|{s.since_ms}|{s.source_to}"


class TradeMsg(msgspec.Struct, frozen=True):
    """A trade of a series, as published on its ``trades`` subject."""

    series: str
    trade: Trade
    source: str = ""

    @property
    def msg_id(self) -> str:
        return f"{self.series}|trade|{self.trade.trade_id}|{self.trade.time_ms}"


class BookUpdate(msgspec.Struct, frozen=True):
    """A change of an order book's top ``depth`` levels per side, as published on its ``books``
    subject: ``snapshot`` (the whole top, ``in_sync``), ``delta`` (the levels that changed after the
    state ``prev``, size 0 = gone from the top) or ``lost`` (out of sync: no levels until the next
    snapshot). ``sequence`` numbers the publisher's states of the book; a reader applies a delta
    only when it holds state ``prev`` of the same ``source``, and starts over at a snapshot, which
    each publisher sends at every resynchronisation and every few seconds (a late reader's start)."""

    series: str
    kind: str
    sequence: int
    prev: int
    depth: int
    venue_seq: int | None
    time_ms: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    source: str = ""
    sent_ms: int = 0

    @property
    def msg_id(self) -> str:
        # a periodic snapshot repeats a state: its publication time tells it apart
        return f"{self.series}|book|{self.source}|{self.sequence}|{self.kind}|{self.sent_ms}"


#: What :class:`BookUpdate.kind` may be.
BOOK_KINDS = frozenset({"snapshot", "delta", "lost"})

Message = CandleMsg | SwitchMsg | TradeMsg | BookUpdate
_encoder = msgspec.json.Encoder()
_candle_decoder = msgspec.json.Decoder(CandleMsg)
_switch_decoder = msgspec.json.Decoder(SwitchMsg)
_trade_decoder = msgspec.json.Decoder(TradeMsg)
_book_decoder = msgspec.json.Decoder(BookUpdate)


def encode(msg: Message) -> tuple[bytes, dict[str, str]]:
    """The payload and headers (``Nats-Msg-Id``) to publish ``msg`` with."""
    return _encoder.encode(msg), {MSG_ID: msg.msg_id}


def decode_candle(data: bytes) -> CandleMsg:
    """A candle message; ValueError when ``data`` is not one (count it and skip it)."""
    try:
        m = _candle_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a candle message: {exc}") from None
    if m.candle.final and not m.candle.closed:
        raise ValueError("not a candle message: final but not closed")
    return m


def decode_switch(data: bytes) -> SwitchMsg:
    try:
        return _switch_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a switch message: {exc}") from None


def decode_trade(data: bytes) -> TradeMsg:
    try:
        return _trade_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a trade message: {exc}") from None


def decode_book(data: bytes) -> BookUpdate:
    """A book message; ValueError when ``data`` is not one (count it and skip it)."""
    try:
        m = _book_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a book message: {exc}") from None
    if m.kind not in BOOK_KINDS or m.depth < 1:
        raise ValueError(f"not a book message: kind {m.kind!r}, depth {m.depth}")
    for p, q in (*m.bids, *m.asks):
        if not (0.0 < p < math.inf and 0.0 <= q < math.inf):
            raise ValueError(f"not a book message: a level ({p}, {q})")
    return m


def newer(old: CandleMsg | None, new: CandleMsg) -> bool:
    """Whether ``new`` (published after ``old``, same candle) replaces ``old``: a final candle is
    replaced only by a final one (a correction), as the stores keep it."""
    return old is None or old.state != FINAL or new.state == FINAL


async def ensure_stream(
    js: Any,
    cluster: str,
    *,
    max_msgs_per_subject: int = MAX_MSGS_PER_SUBJECT,
    max_age_s: float = MAX_AGE_S,
    replicas: int = 1,
) -> Any:
    """Create ``cluster``'s stream on JetStream context ``js`` (or update its limits); its info.

    Every subject of the cluster goes into it, files on disk, the oldest message of a subject
    dropped past ``max_msgs_per_subject``, any message past ``max_age_s``, and repeats of a
    ``Nats-Msg-Id`` within :data:`DUPLICATE_WINDOW_S` dropped."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    cluster_name(cluster)
    config = StreamConfig(
        name=stream_name(cluster),
        subjects=[filter_subject(cluster)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=max_msgs_per_subject,
        max_age=max_age_s,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        return await js.add_stream(config)
    return await js.update_stream(config)
