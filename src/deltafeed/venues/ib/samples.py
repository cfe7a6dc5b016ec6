"""The IB decoder's fuzz target: message bodies laid out as PROTOCOLS-wave2.md §5 and ib_async's
decoder give them (IB publishes no literal frames), plus bad ones on purpose."""

from __future__ import annotations

from deltafeed.venues.base import FuzzTarget
from deltafeed.venues.ib import codec


def _body(*fields: object) -> bytes:
    return codec.frame(fields)[4:]


SEEDS: list[bytes] = [
    _body(4, 2, -1, 2104, "Market data farm connection is OK:usfarm", ""),
    _body(9, 1, 1),
    _body(15, 1, "DU123,DU456"),
    _body(49, 1, 1767268800),
    _body(
        17,
        1,
        "20260101-12:00:00",
        "20260101-12:05:00",
        2,
        1767268800,
        "185.1",
        "185.4",
        "185",
        "185.3",
        "120",
        "185.2",
        12,
        1767268860,
        "185.3",
        "185.5",
        "185.2",
        "185.25",
        "80",
        "185.31",
        9,
    ),
    _body(
        17,
        2,
        "20260101-12:00:00",
        "20260101-12:05:00",
        1,
        1767268800,
        "1.0876",
        "1.0879",
        "1.0875",
        "1.0878",
        -1,
        -1,
        -1,
    ),
    _body(90, 1, 12, 1767268800, "185.1", "185.3", "185.4", "185", "185.2", "120"),
    _body(50, 3, 1, 1767268800, "185.1", "185.4", "185", "185.3", "120", "185.2", 12),
    _body(99, 1, 2, 1767268800, "185.25", "100", 0, "NASDAQ", ""),
    _body(99, 2, 3, 1767268800, "1.08765", "1.0877", "1000000", "2000000", 0),
    _body(
        10,
        7,
        "AAPL",
        "STK",
        "",
        0,
        "",
        "SMART",
        "USD",
        "AAPL",
        "NMS",
        "NMS",
        265598,
        "0.01",
        "",
        "LMT,MKT",
        "SMART,NASDAQ",
        1,
        0,
        "APPLE INC",
        "NASDAQ",
        "",
        "Technology",
        "",
        "",
        "US/Eastern",
        "",
        "",
        "",
        "",
        0,
        1,
        "",
        "",
        "26",
        "",
        "COMMON",
        "1",
        "1",
        "1",
    ),
    _body(52, 1, 7),
    _body(62, 1),
]
BAD_SEEDS: list[bytes] = [
    _body(99, 1, 2, 1767268800, "nan", "-5", 0, "", ""),  # the replica's garbage fault
    _body(17, 1, "a", "b", 3, 1767268800, "1", "1", "1", "1", "1", "1", 1),  # fewer bars than it says
    _body(99, 1, 3, 1767268800, "1.0878", "0", "1", "1", 0),  # an impossible ask
    b"abc\0",
]


def fuzz_targets() -> list[FuzzTarget]:
    dec = codec.Decoder()

    def run(data: bytes) -> object:
        dec.server_version = codec.SERVER_VERSION  # past the hello: every input is a message
        return dec.decode(codec.split_fields(data))

    return [
        FuzzTarget(
            name="ib_messages",
            seeds=SEEDS + BAD_SEEDS,
            run=run,
            skips=lambda: dec.errors,
            bad_seeds=BAD_SEEDS,
        )
    ]
