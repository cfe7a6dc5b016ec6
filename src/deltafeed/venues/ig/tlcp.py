"""Lightstreamer TLCP 2.5 client codec over WebSocket: requests to send, server lines to events, item state.

Sans-I/O: nothing here opens a socket or reads a clock. :mod:`deltafeed.venues.ig.pool` does the I/O, the IG
codec (:mod:`deltafeed.venues.ig.codec`) gives the fields a meaning. Facts from ../shared/PROTOCOLS.md section 4
(the vendor's Haxe client: ``ClientMachine.hx``, ``ParseTools.hx`` and its WebSocket test transcripts).

Requests (client → server) are text messages whose first line is the request name and whose second line
is a URL-encoded query; several requests of one kind may share a message, one query line each (the Haxe
client's ``prepareBatchWS``), as long as the whole message stays within the CONOK request limit.
Parameters are written in the order the vendor's client writes them, so a request can be compared with
its transcripts byte for byte. Values are percent-encoded with everything but ``A-Z a-z 0-9 - _ . ~``
escaped: a space becomes ``%20`` (never ``+``, which TLCP would read as a literal plus), ``|`` in an IG
password becomes ``%7C``.

Server lines (server → client) are CRLF-terminated; one WebSocket message may carry several. WebSocket
messages are delimited, and the server never splits a line across two of them (the vendor's client relies
on that too), so :meth:`LineDecoder.feed` takes one message and returns its events.

Update values (``U,<sub>,<item>,<v1>|<v2>|...``) are kept raw in :class:`Update` and decoded by
:class:`ItemState`, which holds the current values of every (subscription, item): an empty value leaves
the field unchanged, ``#`` makes it null (None), ``$`` the empty string, ``^N`` leaves N fields unchanged,
anything else is the new value, percent-decoded (``%`` is rare, so the decode is skipped without one).
One pass over the line, no intermediate list of deltas: the hot path of the IG stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote

import msgspec

from deltafeed.venues.checks import DECODER_BUG

#: The WebSocket subprotocol of TLCP 2.5 (the Haxe HEAD and the 2.2.3 Python wheel both speak it).
PROTOCOL = "TLCP-2.5.0.lightstreamer.com"

#: ``LS_cid`` of the vendor's Python client 2.2.3: the server identifies client libraries by it.
DEFAULT_CID = "v Wntytg4pkpW37AM3P4hwLri8M4OD6Ah6e"

MODES = ("MERGE", "DISTINCT", "RAW", "COMMAND")


# --- requests -----------------------------------------------------------------------------------


def _enc(value: str | int) -> str:
    return quote(str(value), safe="")


def _query(params: Iterable[tuple[str, str | int | None]]) -> str:
    """``k=v&k=v`` with every value percent-encoded; parameters whose value is None are left out."""
    return "&".join(f"{k}={_enc(v)}" for k, v in params if v is not None)


def _bool(flag: bool) -> str:
    return "true" if flag else "false"


def ws_url(server: str) -> str:
    """The WebSocket URL of a Lightstreamer server address: ``https://host`` → ``wss://host/lightstreamer``.

    IG hands out the address as ``https://…`` (``lightstreamerEndpoint``); the vendor's client appends
    ``/lightstreamer`` and switches http(s) to ws(s). A ``ws(s)://`` address is kept as it is.
    """
    base = server.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[8:]
    elif base.startswith("http://"):
        base = "ws://" + base[7:]
    elif not base.startswith(("ws://", "wss://")):
        base = "wss://" + base
    return base if base.endswith("/lightstreamer") else base + "/lightstreamer"


def wsok() -> str:
    """The first message on a new WebSocket: the server answers ``WSOK``."""
    return "wsok"


def create_session(
    user: str | None = None,
    password: str | None = None,
    *,
    cid: str = DEFAULT_CID,
    adapter_set: str | None = None,
    keepalive_ms: int | None = None,
    inactivity_ms: int | None = None,
    max_bandwidth: float | None = None,
    old_session: str | None = None,
    send_sync: bool = False,
    cause: str | None = None,
) -> str:
    """``create_session`` with the vendor client's parameter order (the password last).

    ``send_sync=False`` asks the server not to send ``SYNC`` lines: deltafeed takes event time from the
    venue's fields, not from the stream's pace. A ``keepalive_ms`` asks for that PROBE interval; the
    server may choose another and says which in CONOK. ``old_session`` names the session this one
    replaces, so the server can end it at once instead of waiting for it to time out.
    """
    return "create_session\r\n" + _query(
        (
            ("LS_keepalive_millis", keepalive_ms),
            ("LS_inactivity_millis", inactivity_ms),
            ("LS_requested_max_bandwidth", None if max_bandwidth is None else f"{max_bandwidth:g}"),
            ("LS_adapter_set", adapter_set),
            ("LS_user", user),
            ("LS_cid", cid),
            ("LS_old_session", old_session),
            ("LS_send_sync", None if send_sync else "false"),
            ("LS_cause", cause),
            ("LS_password", password),
        )
    )


def bind_session(
    session_id: str,
    *,
    keepalive_ms: int | None = None,
    inactivity_ms: int | None = None,
    send_sync: bool = False,
    cause: str | None = None,
) -> str:
    """``bind_session`` on a new WebSocket (after ``LOOP``): the session and its subscriptions go on."""
    return "bind_session\r\n" + _query(
        (
            ("LS_session", session_id),
            ("LS_keepalive_millis", keepalive_ms),
            ("LS_inactivity_millis", inactivity_ms),
            ("LS_send_sync", None if send_sync else "false"),
            ("LS_cause", cause),
        )
    )


def subscribe_params(
    req_id: int,
    sub_id: int,
    mode: str,
    items: Sequence[str],
    fields: Sequence[str],
    *,
    snapshot: bool | int = True,
    data_adapter: str | None = None,
    max_frequency: str | float | None = None,
    ack: bool = False,
) -> str:
    """The query line of ``control`` ``LS_op=add`` (without the ``control`` line; see :func:`control`).

    ``items`` and ``fields`` become the space-separated ``LS_group`` and ``LS_schema``. ``snapshot`` is
    true/false, or the number of snapshot events wanted (DISTINCT). ``ack=False`` (what the vendor's
    client sends over WebSocket) spares the REQOK: SUBOK confirms the subscription, and a refusal still
    comes as REQERR.
    """
    if mode not in MODES:
        raise ValueError(f"unknown subscription mode {mode!r}; use one of {', '.join(MODES)}")
    if not items or not fields:
        raise ValueError("a subscription needs at least one item and one field")
    snap = _bool(snapshot) if isinstance(snapshot, bool) else str(int(snapshot))
    freq = max_frequency if max_frequency is None or isinstance(max_frequency, str) else f"{max_frequency:g}"
    return _query(
        (
            ("LS_reqId", req_id),
            ("LS_op", "add"),
            ("LS_subId", sub_id),
            ("LS_mode", mode),
            ("LS_group", " ".join(items)),
            ("LS_schema", " ".join(fields)),
            ("LS_data_adapter", data_adapter),
            ("LS_snapshot", snap),
            ("LS_requested_max_frequency", freq),
            ("LS_ack", _bool(ack)),
        )
    )


def unsubscribe_params(req_id: int, sub_id: int, *, ack: bool = False) -> str:
    """The query line of ``control`` ``LS_op=delete``; the server answers ``UNSUB,<subId>``."""
    return _query((("LS_reqId", req_id), ("LS_subId", sub_id), ("LS_op", "delete"), ("LS_ack", _bool(ack))))


def destroy_params(req_id: int, cause: str = "api") -> str:
    """The query line of ``control`` ``LS_op=destroy``: ends the session and closes the socket at once,
    so the account's connection slot is free before the next session opens."""
    return _query((("LS_reqId", req_id), ("LS_op", "destroy"), ("LS_close_socket", "true"), ("LS_cause", cause)))


def control(*queries: str) -> str:
    """One ``control`` message carrying every query line given (a batch)."""
    if not queries:
        raise ValueError("control needs at least one request")
    return "control\r\n" + "\r\n".join(queries)


def control_batches(queries: Sequence[str], request_limit: int) -> list[str]:
    """``control`` messages carrying ``queries`` in order, each at most ``request_limit`` bytes (UTF-8).

    The limit is CONOK's request limit. A single query longer than the limit still goes alone (the
    server will refuse it, and says so with REQERR), as in the vendor's client.
    """
    out: list[str] = []
    msg = ""
    size = 0
    for q in queries:
        qlen = len(q.encode())
        if msg and size + 2 + qlen <= request_limit:
            msg += "\r\n" + q
            size += 2 + qlen
        else:
            if msg:
                out.append(msg)
            msg = "control\r\n" + q
            size = 9 + qlen
    if msg:
        out.append(msg)
    return out


# --- server lines -------------------------------------------------------------------------------


class Wsok(msgspec.Struct, gc=False):
    """``WSOK``: the server accepted the WebSocket for TLCP."""


class Conok(msgspec.Struct, gc=False):
    """``CONOK,<session>,<request limit>,<keepalive ms>,<control link or *>``: the session is up."""

    session_id: str
    request_limit: int
    keepalive_ms: int
    control_link: str | None  # None for ``*`` (this server)


class Conerr(msgspec.Struct, gc=False):
    """``CONERR,<code>,<message>``: the session was refused (bad credentials, limits)."""

    code: int
    message: str


class End(msgspec.Struct, gc=False):
    """``END,<code>,<message>``: the server closed the session."""

    code: int
    message: str


class Error(msgspec.Struct, gc=False):
    """``ERROR,<code>,<message>``: a protocol-level error; the session is unusable."""

    code: int
    message: str


class Reqok(msgspec.Struct, gc=False):
    """``REQOK[,<reqId>]``: a control request succeeded (only sent with ``LS_ack=true``)."""

    req_id: int | None


class Reqerr(msgspec.Struct, gc=False):
    """``REQERR,<reqId>,<code>,<message>``: a control request was refused (an unknown item, say)."""

    req_id: int
    code: int
    message: str


class Subok(msgspec.Struct, gc=False):
    """``SUBOK,<subId>,<items>,<fields>``: a subscription is active."""

    sub_id: int
    num_items: int
    num_fields: int


class Subcmd(msgspec.Struct, gc=False):
    """``SUBCMD,<subId>,<items>,<fields>,<key index>,<command index>``: a COMMAND-mode subscription."""

    sub_id: int
    num_items: int
    num_fields: int
    key_index: int
    command_index: int


class Unsub(msgspec.Struct, gc=False):
    """``UNSUB,<subId>``: the subscription ended."""

    sub_id: int


class Update(msgspec.Struct, gc=False):
    """``U,<subId>,<item>,<values>``; ``item`` is 1-based and ``values`` the raw, still encoded values
    (``A|`` for "A, then unchanged"): :meth:`ItemState.apply` decodes them against the current ones."""

    sub_id: int
    item: int
    values: str


class EndOfSnapshot(msgspec.Struct, gc=False):
    """``EOS,<subId>,<item>``: the snapshot of the item is complete; later updates are live."""

    sub_id: int
    item: int


class ClearSnapshot(msgspec.Struct, gc=False):
    """``CS,<subId>,<item>``: forget the item's values (the server cleared its state)."""

    sub_id: int
    item: int


class Overflow(msgspec.Struct, gc=False):
    """``OV,<subId>,<item>,<lost>``: the server dropped ``lost`` updates of the item (a slow client)."""

    sub_id: int
    item: int
    lost: int


class Conf(msgspec.Struct, gc=False):
    """``CONF,<subId>,<max frequency or unlimited>,<filtered|unfiltered>``."""

    sub_id: int
    max_frequency: str
    filtered: bool


class Probe(msgspec.Struct, gc=False):
    """``PROBE``: the keepalive the server sends when it had nothing else to send."""


class Noop(msgspec.Struct, gc=False):
    """``NOOP[,…]``: filler; only a sign of life."""


class Sync(msgspec.Struct, gc=False):
    """``SYNC,<seconds>``: seconds since the session started, by the server's clock."""

    seconds: int


class Loop(msgspec.Struct, gc=False):
    """``LOOP,<ms>``: the server wants the session rebound (a new connection) after ``ms``."""

    delay_ms: int


class Info(msgspec.Struct, gc=False):
    """``SERVNAME``, ``CLIENTIP``, ``CONS`` or ``PROG``: session information, ``kind`` names which."""

    kind: str
    value: str


class Malformed(msgspec.Struct, gc=False):
    """A line of a known ``kind`` that does not parse (a missing or non-numeric field, a number out of
    range); already counted in :attr:`LineDecoder.errors`. Returned rather than dropped so that a session
    can tell a lost line that carried state (an update, a SUBOK) from a harmless one: see
    :data:`STATELESS_KINDS`."""

    kind: str
    reason: str


Event = (
    Wsok
    | Conok
    | Conerr
    | End
    | Error
    | Reqok
    | Reqerr
    | Subok
    | Subcmd
    | Unsub
    | Update
    | EndOfSnapshot
    | ClearSnapshot
    | Overflow
    | Conf
    | Probe
    | Noop
    | Sync
    | Loop
    | Info
    | Malformed
)

#: Line kinds a client can lose without losing state: information and keepalives, acknowledgements it
#: did not ask for, COMMAND-mode subscriptions it never makes. Any other malformed line (``U``,
#: ``SUBOK``, ``EOS``, ``CONOK``, ...) leaves a session's view of its items wrong or unknown.
STATELESS_KINDS = frozenset(
    {"WSOK", "PROBE", "NOOP", "SYNC", "CONF", "REQOK", "SUBCMD", "SERVNAME", "CLIENTIP", "CONS", "PROG"}
)

#: Bounds on what a server line may make a client allocate. A subscription's items and fields travel
#: as space-separated names in one control request, which CONOK's request limit bounds (50,000 bytes
#: by the vendor's default): at two bytes a name, no subscription can hold more than 25,000 of either.
#: A SUBOK claiming more is refused as malformed, so ``SUBOK,1,1,60000000`` (20 bytes) cannot make
#: :class:`ItemState` allocate 60 million fields.
MAX_ITEMS = 25_000
MAX_FIELDS = 25_000
#: Digits of an integer field: int64's 19 (a longer one is refused before ``int()`` sees it).
_MAX_DIGITS = 19

_PROBE = Probe()
_NOOP = Noop()
_WSOK = Wsok()


def _int(text: str, low: int = 0, high: int = 2**63 - 1) -> int:
    """A decimal integer field within [low, high]; ValueError otherwise (ASCII digits only, at most 19)."""
    body = text[1:] if text[:1] == "-" else text
    if not (0 < len(body) <= _MAX_DIGITS and body.isascii() and body.isdecimal()):
        raise ValueError(f"not an integer: {text[:30]!r}")
    v = int(text)
    if not low <= v <= high:
        raise ValueError(f"{v} is outside {low}..{high}")
    return v


def _args(args: list[str], n: int) -> list[str]:
    """The first ``n`` arguments; ValueError when there are fewer."""
    if len(args) < n:
        raise ValueError(f"{len(args)} fields, {n} expected")
    return args[:n]


def _code_msg(args: list[str]) -> tuple[int, str]:
    """``<code>,<message>`` (the message percent-encoded, possibly with commas of its own)."""
    return _int(_args(args, 1)[0], -(2**31), 2**31), unquote(",".join(args[1:])) if len(args) > 1 else ""


class LineDecoder:
    """Turns server lines into events; counts and skips what it cannot use. Never raises.

    ``feed(message)`` returns the events of one WebSocket message, ``decode(line)`` of one line (without
    CRLF). Lines of a kind this client does not use (``MSGDONE``, ``MPN…``) are counted in ``unknown`` by
    their first word and skipped. A known line that does not parse (a missing or non-numeric field, a
    number outside its range: item and field counts beyond :data:`MAX_ITEMS` / :data:`MAX_FIELDS`, a
    negative id) is counted in ``errors`` by its kind, described in ``last_error``, and returned as
    :class:`Malformed` so that the session can judge what it lost. An exception the decoder did not
    expect is counted as ``decoder_bug`` and the line skipped, so that no line can end a stream.
    """

    def __init__(self) -> None:
        self.unknown: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.last_error = ""
        self.lines = 0

    def feed(self, message: str | bytes) -> list[Event]:
        try:
            text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        except Exception as exc:  # pragma: no cover - bytes.decode with "replace" does not raise
            self._bad(DECODER_BUG, f"{type(exc).__name__}: {exc}")
            return []
        out: list[Event] = []
        decode = self.decode
        for line in text.split("\r\n"):
            if line:
                ev = decode(line)
                if ev is not None:
                    out.append(ev)
        return out

    def decode(self, line: str) -> Event | None:
        self.lines += 1
        kind = "U"
        try:
            if line[:2] == "U,":  # the hot path: sub and item as ints, the values kept raw
                p = line.split(",", 3)
                return Update(_int(p[1], 1), _int(p[2], 1, MAX_ITEMS), p[3])
            if line == "PROBE":
                return _PROBE
            kind, _, rest = line.partition(",")
            return self._other(kind, rest.split(",") if rest else [], line)
        except (ValueError, IndexError) as exc:
            return self._bad(kind, line, exc)
        except Exception as exc:  # see checks.DECODER_BUG: counted, never raised
            return self._bad(DECODER_BUG, line, exc)

    def _other(self, kind: str, args: list[str], line: str) -> Event | None:
        if kind == "EOS":
            sub, item = _args(args, 2)
            return EndOfSnapshot(_int(sub, 1), _int(item, 1, MAX_ITEMS))
        if kind == "OV":
            sub, item, lost = _args(args, 3)
            return Overflow(_int(sub, 1), _int(item, 1, MAX_ITEMS), _int(lost))
        if kind == "CS":
            sub, item = _args(args, 2)
            return ClearSnapshot(_int(sub, 1), _int(item, 1, MAX_ITEMS))
        if kind == "SUBOK":
            sub, items, fields = _args(args, 3)
            return Subok(_int(sub, 1), _int(items, 1, MAX_ITEMS), _int(fields, 1, MAX_FIELDS))
        if kind == "UNSUB":
            return Unsub(_int(_args(args, 1)[0], 1))
        if kind == "REQOK":
            return Reqok(_int(args[0], 1) if args else None)
        if kind == "REQERR":
            code, msg = _code_msg(args[1:])
            return Reqerr(_int(_args(args, 1)[0], 1), code, msg)
        if kind == "NOOP":
            return _NOOP
        if kind == "SYNC":
            return Sync(_int(_args(args, 1)[0]))
        if kind == "CONOK":
            session, limit, keepalive = _args(args, 3)
            if not session:
                raise ValueError("no session id")
            link = args[3] if len(args) > 3 else "*"
            return Conok(session, _int(limit, 1), _int(keepalive), None if link == "*" else unquote(link))
        if kind == "WSOK":
            return _WSOK
        if kind == "CONERR":
            return Conerr(*_code_msg(args))
        if kind == "END":
            return End(*_code_msg(args))
        if kind == "ERROR":
            return Error(*_code_msg(args))
        if kind == "LOOP":
            return Loop(_int(args[0]) if args else 0)
        if kind == "CONF":
            sub, freq, filtered = _args(args, 3)
            return Conf(_int(sub, 1), freq, filtered == "filtered")
        if kind == "SUBCMD":
            sub, items, fields, key, command = _args(args, 5)
            n_fields = _int(fields, 1, MAX_FIELDS)
            return Subcmd(
                _int(sub, 1), _int(items, 1, MAX_ITEMS), n_fields, _int(key, 1, n_fields), _int(command, 1, n_fields)
            )
        if kind in ("SERVNAME", "CLIENTIP", "CONS", "PROG"):
            return Info(kind, unquote(",".join(args)))
        self.unknown[kind[:20]] += 1
        return None

    def _bad(self, kind: str, line: str, exc: BaseException | None = None) -> Malformed:
        self.errors[kind[:20]] += 1
        why = f" ({exc})" if exc is not None else ""
        self.last_error = f"malformed {kind[:20]} line{why[:80]}: {line[:120]!r}"
        return Malformed(kind[:20], self.last_error)


# --- item state ---------------------------------------------------------------------------------


class BadUpdate(ValueError):
    """An update that cannot be applied: unknown subscription or item, wrong number of fields, or an
    encoding this client did not ask for (``^P`` JSON patch, ``^T`` TLCP-diff)."""


FieldValues = list[str | None]


class ItemState:
    """The current field values of every item of every subscription, kept up to date by ``U`` lines.

    A subscription is known from its SUBOK (or SUBCMD) on; its items start with every field null, as in
    the vendor's client. An item's values are allocated at its first update, not at SUBOK, so what a
    SUBOK costs does not grow with the item count it claims. :meth:`apply` decodes an update against the
    item's current values and returns the new values as a fresh list (the previous one is never changed,
    so a caller may keep it); a bad update raises :class:`BadUpdate` and leaves the state as it was. CS
    clears an item back to nulls; UNSUB forgets the subscription.
    """

    def __init__(self) -> None:
        self._subs: dict[int, dict[int, FieldValues]] = {}  # sub -> 0-based item -> values
        self._shape: dict[int, tuple[int, int]] = {}  # sub -> (items, fields)

    def open(self, sub_id: int, num_items: int, num_fields: int) -> None:
        """Start (or restart) a subscription of ``num_items`` items of ``num_fields`` fields (ValueError
        beyond :data:`MAX_ITEMS` / :data:`MAX_FIELDS`)."""
        if not (1 <= num_items <= MAX_ITEMS and 1 <= num_fields <= MAX_FIELDS):
            raise ValueError(f"a subscription of {num_items} items of {num_fields} fields is out of bounds")
        self._shape[sub_id] = (num_items, num_fields)
        self._subs[sub_id] = {}

    def close(self, sub_id: int) -> None:
        self._subs.pop(sub_id, None)
        self._shape.pop(sub_id, None)

    def clear(self, sub_id: int, item: int) -> None:
        items = self._subs.get(sub_id)
        if items is not None:
            items.pop(item - 1, None)

    def values(self, sub_id: int, item: int) -> FieldValues | None:
        """The current values of an item, or None for an unknown one."""
        items = self._subs.get(sub_id)
        if items is None:
            return None
        num_items, num_fields = self._shape[sub_id]
        if not 1 <= item <= num_items:
            return None
        got = items.get(item - 1)
        empty: FieldValues = [None] * num_fields
        return got if got is not None else empty

    def apply(self, update: Update) -> FieldValues:
        items = self._subs.get(update.sub_id)
        if items is None:
            raise BadUpdate(f"update for subscription {update.sub_id}, which is not active")
        num_items, n = self._shape[update.sub_id]
        idx = update.item - 1
        if not 0 <= idx < num_items:
            raise BadUpdate(
                f"update for item {update.item} of subscription {update.sub_id}, which has {num_items} items"
            )
        old = items.get(idx)
        new: FieldValues = old.copy() if old is not None else [None] * n
        i = 0
        for tok in update.values.split("|"):
            if not tok:  # unchanged
                i += 1
                continue
            c = tok[0]
            if c == "^":
                if 1 < len(tok) <= 7 and tok[1:].isascii() and tok[1:].isdecimal():
                    i += int(tok[1:])
                    continue
                raise BadUpdate(
                    f"unsupported value encoding {tok[:10]!r} (JSON patch and TLCP-diff are not "
                    "requested by this client)"
                )
            if i >= n:
                i += 1
                break
            if c == "#" and len(tok) == 1:
                new[i] = None
            elif c == "$" and len(tok) == 1:
                new[i] = ""
            elif "%" in tok:
                new[i] = unquote(tok)
            else:
                new[i] = tok
            i += 1
        if i != n:
            raise BadUpdate(
                f"update of subscription {update.sub_id} item {update.item} carries {i} fields, "
                f"not {n}: {update.values[:80]!r}"
            )
        items[idx] = new
        return new
