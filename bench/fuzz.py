"""Fuzz every venue decoder: valid frames mutated, and random bytes; no exception may escape.

Each decoder (target) is run over ``--count`` inputs. Most are mutations of real, valid frames and
bodies (the venues' documented examples and what the replicas send): bit flips, byte changes,
truncations, deleted or repeated spans, splices of two seeds, numbers swapped for NaN, 1e400, -0 or
ints past int64, strings swapped for odd ones, deep nesting; one in five is random bytes. For every
target it prints the inputs tried, the exceptions that escaped (must be 0), the decoder bugs its
safety net caught (must be 0 as well), the inputs refused with the decoder's declared error (REST
bodies and bi5 files raise one: ``BadAnswer``, ``BadCandles``, ``BadPrices``, ``Bi5Error``;
``BadUpdate`` from ``ItemState``), the peak memory and the time.

Two engines make the inputs:

- ``atheris`` (the default where it is installed): Google's coverage-guided fuzzer, libFuzzer in
  Python. Each target runs in its own process with deltafeed instrumented, starting from the same
  seeds; its custom mutator alternates libFuzzer's own mutations with the structure-aware ones below,
  so a mutation that reaches new code is kept and mutated further. Peak memory is the process's peak
  RSS above what it held after start-up.
- ``seeded``: the structure-aware mutator alone, from a seeded generator: reproducible to the input
  (``--seed``), no native code, and fast to start. The test suite runs it (tests/unit/test_fuzz.py). Each
  target also runs in its own process; peak memory as for atheris.

``--in-process`` runs the targets in this process instead and measures peak memory with tracemalloc
(Python allocations only); that is what the test suite does.

    python bench/fuzz.py --count 1000000                 # every target, 1,000,000 inputs each
    python bench/fuzz.py --count 20000 --engine seeded --targets tlcp_stream,dukascopy_bi5
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HOUR = 1_794_582_000_000 - 1_794_582_000_000 % 3_600_000  # an hour of Friday 2026-11-13
NOW_MS = HOUR + 1_800_000


# --- targets ----------------------------------------------------------------------------------------


@dataclass
class Target:
    """One decoder under test: its seed inputs, how to feed it one input, which exceptions it declares
    (a REST body or file decoder refuses a bad input by raising one), and where it counts skips."""

    seeds: list[bytes]
    run: Callable[[bytes], object]
    declared: tuple[type[BaseException], ...] = ()
    skips: Callable[[], Counter[str]] = Counter
    #: A structure-aware step before the decoder (bi5: compress the mutated records), or None.
    prepare: Callable[[bytes], bytes] | None = None
    #: Inputs fed once, before the seeds, but not mutated (too costly to repeat: the bi5 bomb).
    once: list[bytes] = field(default_factory=list)


def _binance_stream() -> Target:
    from deltafeed.venues.binance import codec as binance

    trade = (
        b'{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,'
        b'"m":true,"M":true}'
    )
    kline = (
        b'{"e":"kline","E":1672515782136,"s":"BNBBTC","k":{"t":1672515780000,"T":1672515839999,"s":"BNBBTC",'
        b'"i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,'
        b'"x":false,"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}'
    )
    dec = binance.StreamDecoder()
    return Target(
        seeds=[
            trade,
            binance.wrap_combined("bnbbtc@trade", trade),
            kline,
            binance.wrap_combined("bnbbtc@kline_1m", kline),
            b'{"e":"serverShutdown","E":1770123456789}',
            b'{"result":null,"id":1}',
            b'{"code":2,"msg":"Invalid request","id":3}',
            trade.replace(b'"p":"0.001"', b'"p":"NaN"'),
        ],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _oanda_pricing() -> Target:
    from deltafeed.venues.oanda import codec as oanda

    price = (
        b'{"type":"PRICE","time":"2016-10-27T08:38:45.664613867Z",'
        b'"bids":[{"price":"1.09274","liquidity":10000000},'
        b'{"price":"1.09273","liquidity":10000000}],"asks":[{"price":"1.09287","liquidity":10000000}],'
        b'"closeoutBid":"1.09274","closeoutAsk":"1.09287","status":"tradeable","tradeable":true,'
        b'"instrument":"EUR_USD"}'
    )
    dec = oanda.PriceDecoder()
    return Target(
        seeds=[
            price,
            b'{"type":"HEARTBEAT","time":"2016-10-27T08:38:44.327443673Z"}',
            b'{"type":"HEARTBEAT","time":"1477557524.327443673"}',
            price.replace(b'"tradeable":true', b'"tradeable":false'),
        ],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _finnhub_stream() -> Target:
    from deltafeed.venues.finnhub import codec as finnhub

    trades = (
        b'{"data":[{"c":["1","8","24","12"],"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467},'
        b'{"p":1.08495,"s":"OANDA:EUR_USD","t":1582641000200,"v":0},{"p":261.75,"s":"AAPL","t":1582641000300,'
        b'"v":5}],"type":"trade"}'
    )
    dec = finnhub.StreamDecoder()
    return Target(
        seeds=[
            trades,
            b'{"type":"ping"}',
            b'{"type":"error","msg":"Subscribing to too many symbols"}',
            b'{"type":"news",',
            trades.replace(b'"p":7296.89', b'"p":1e400'),
        ],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _tlcp_stream() -> Target:
    """TLCP lines through the decoder, the item state and IG's MARKET/CHART decoding, as a session
    holding subscription 1 (a MARKET item) and 2 (a CHART item) applies them."""
    from deltafeed.venues.ig import codec as ig
    from deltafeed.venues.ig import tlcp

    dec = tlcp.LineDecoder()
    igd = ig.IGDecoder(tz="UTC")
    skips: Counter[str] = Counter()

    def run(data: bytes) -> None:
        state = tlcp.ItemState()
        state.open(1, 1, len(ig.MARKET_FIELDS))
        state.open(2, 1, len(ig.CHART_FIELDS))
        for ev in dec.feed(data):
            t = type(ev)
            if t is tlcp.Subok or t is tlcp.Subcmd:
                state.open(ev.sub_id, ev.num_items, ev.num_fields)  # type: ignore[union-attr]
            elif t is tlcp.ClearSnapshot:
                state.clear(ev.sub_id, ev.item)  # type: ignore[union-attr]
            elif t is tlcp.Unsub:
                state.close(ev.sub_id)  # type: ignore[union-attr]
            elif t is tlcp.Update:
                assert isinstance(ev, tlcp.Update)
                try:
                    values = state.apply(ev)
                except tlcp.BadUpdate:
                    skips["bad_update"] += 1
                    continue
                if ev.sub_id == 1 and len(values) == len(ig.MARKET_FIELDS):
                    igd.market_quote("CS.D.EURUSD.CFD.IP", dict(zip(ig.MARKET_FIELDS, values, strict=True)), NOW_MS)
                elif ev.sub_id == 2 and len(values) == len(ig.CHART_FIELDS):
                    igd.chart_candles("CS.D.EURUSD.CFD.IP", dict(zip(ig.CHART_FIELDS, values, strict=True)))

    session = (
        b"WSOK\r\nCONOK,S1a2b3c,50000,5000,*\r\nSERVNAME,Lightstreamer%20HTTP%20Server\r\nCLIENTIP,127.0.0.1\r\n"
        b"CONS,unlimited\r\nSUBOK,1,1,4\r\nSUBOK,2,1,11\r\nCONF,1,unlimited,filtered\r\n"
        b"U,1,1,1.09274|1.09287|10:00:01|TRADEABLE\r\nEOS,1,1\r\nU,1,1,1.09275||10:00:02|\r\nU,1,1,^2|10:00:03|\r\n"
        b"U,2,1,1.1|1.3|1.0|1.2|1.15|1.35|1.05|1.25|" + str(NOW_MS).encode() + b"|0|42\r\n"
        b"U,2,1,||||||||^2|1|43\r\nPROBE\r\nOV,1,1,3\r\nCS,1,1\r\nSYNC,12\r\nLOOP,0\r\n"
    )
    return Target(
        seeds=[
            session,
            b"REQERR,4,19,Bad%20item%2C%20really\r\nEND,31,Closed%20by%20admin\r\nUNSUB,1\r\n",
            b"CONERR,1,User/password%20check%20failed\r\n",
            b"SUBCMD,3,1,4,1,2\r\nSUBCMD,1\r\nPROBE\r\n",
            b"SUBOK,1,1,60000000\r\nU,1,1,%23|%24|%5E1|a%7Cb%25c%20d\r\nREQOK,3\r\nNOOP\r\n",
        ],
        run=run,
        skips=lambda: dec.errors + igd.errors + skips,
    )


def _ig_rest() -> Target:
    from deltafeed.venues.ig import rest as ig_rest

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

    return Target(
        seeds=[
            body,
            b'{"errorCode":"error.public-api.exceeded-account-historical-data-allowance"}',
            b'{"prices":[],"allowance":{"remainingAllowance":0,"totalAllowance":10000,"allowanceExpiry":1}}',
        ],
        run=run,
        declared=(ig_rest.BadPrices,),
    )


def _dukascopy_bi5() -> Target:
    from deltafeed.model import Quote
    from deltafeed.venues.dukascopy import codec as dukascopy

    quotes = [Quote("EURUSD", HOUR + i * 7_919, 1.08 + i * 1e-5, 1.0802 + i * 1e-5, 1.5e6, 2.25e6) for i in range(60)]
    body = dukascopy.encode_bi5(quotes, HOUR, "EURUSD")
    skipped: Counter[str] = Counter()
    bomb = _bomb(2_000_000 * dukascopy.RECORD_SIZE)  # 2 million ticks in 6 KiB

    def prepare(records: bytes) -> bytes:
        """Mutated records compressed again: reaches the record checks, which bytes flipped in an
        LZMA stream rarely do."""
        return lzma.compress(records, format=lzma.FORMAT_ALONE, preset=0)

    return Target(
        seeds=[body, lzma.decompress(body)[:400], b""],
        run=lambda data: dukascopy.decode_bi5(data, HOUR, "EURUSD", skipped),
        declared=(dukascopy.Bi5Error,),
        skips=lambda: skipped,
        prepare=prepare,
        once=[bomb],
    )


def _bomb(size: int) -> bytes:
    """An LZMA body of ``size`` zero bytes, made a MiB at a time (the fuzzer's own memory stays small)."""
    comp = lzma.LZMACompressor(format=lzma.FORMAT_ALONE, preset=0)
    chunk = bytes(1 << 20)
    parts = [comp.compress(chunk[: min(len(chunk), size - done)]) for done in range(0, size, len(chunk))]
    return b"".join(parts) + comp.flush()


def _binance_rest() -> Target:
    from deltafeed.venues.binance import codec as binance

    klines = (
        b'[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",1499644799999,'
        b'"2434.19055334",308,"1756.87402397","28.46694368","0"],[1499040060000,"0.01634790","0.80000000",'
        b'"0.01575800","0.01577100","0.0",1499644859999,"0",0,"0","0","0"]]'
    )

    refused: Counter[str] = Counter()  # the decoders' declared errors, by decoder (each input goes to three)

    def run(data: bytes) -> None:
        for what, decode in (
            ("klines", lambda: binance.decode_klines(data, 60_000, NOW_MS)),
            ("time", lambda: binance.decode_server_time(data)),
            ("exchange_info", lambda: binance.symbols_from_exchange_info(data)),
        ):
            try:
                decode()
            except binance.BadAnswer:
                refused[f"refused_{what}"] += 1
        binance.decode_error(data)

    return Target(
        seeds=[
            klines,
            b'{"serverTime":1499827319559}',
            b'{"code":-1121,"msg":"Invalid symbol."}',
            b'{"timezone":"UTC","symbols":[{"symbol":"BTCUSDT","status":"TRADING"},'
            b'{"symbol":"ETHUSDT","status":"BREAK"}]}',
        ],
        run=run,
        skips=lambda: refused,
    )


def _oanda_candles() -> Target:
    from deltafeed.venues.oanda import codec as oanda

    body = (
        b'{"instrument":"EUR_USD","granularity":"M1","candles":[{"complete":true,"volume":12,'
        b'"time":"2016-10-17T15:16:00.000000000Z","mid":{"o":"1.09700","h":"1.09707","l":"1.09695","c":"1.09703"},'
        b'"bid":{"o":"1.09693","h":"1.09700","l":"1.09688","c":"1.09696"},"ask":{"o":"1.09707","h":"1.09714",'
        b'"l":"1.09702","c":"1.09710"}},{"complete":false,"volume":3,"time":"2016-10-17T15:17:00.000000000Z",'
        b'"mid":{"o":"1.09703","h":"1.09703","l":"1.09701","c":"1.09702"},"bid":{"o":"1.09696","h":"1.09696",'
        b'"l":"1.09694","c":"1.09695"},"ask":{"o":"1.09710","h":"1.09710","l":"1.09708","c":"1.09709"}}]}'
    )

    refused: Counter[str] = Counter()

    def run(data: bytes) -> None:
        try:
            oanda.decode_candles_all(data)
        except oanda.BadCandles:
            refused["refused_candles"] += 1
        oanda.decode_instruments(data)  # its BadCandles is the target's declared error

    return Target(
        seeds=[body, b'{"instruments":[{"name":"EUR_USD","type":"CURRENCY"},{"name":"XAU_USD"}]}'],
        run=run,
        declared=(oanda.BadCandles,),
        skips=lambda: refused,
    )


def _finnhub_candles() -> Target:
    from deltafeed.venues.finnhub import codec as finnhub

    body = (
        b'{"c":[217.68,221.03,219.89],"h":[222.49,221.5,220.94],"l":[217.19,217.1402,218.83],'
        b'"o":[221.03,218.55,220],"s":"ok","t":[1569297600,1569384000,1569470400],"v":[33463820,24018876,20730608]}'
    )

    def run(data: bytes) -> None:
        finnhub.decode_error(data)
        finnhub.decode_candles(data)

    return Target(
        seeds=[body, b'{"s":"no_data"}', b'{"error":"You don\'t have access to this resource."}'],
        run=run,
        declared=(finnhub.BadCandles,),
    )


TARGETS: dict[str, Callable[[], Target]] = {
    "binance_stream": _binance_stream,
    "oanda_pricing": _oanda_pricing,
    "finnhub_stream": _finnhub_stream,
    "tlcp_stream": _tlcp_stream,
    "ig_rest_prices": _ig_rest,
    "dukascopy_bi5": _dukascopy_bi5,
    "binance_rest": _binance_rest,
    "oanda_candles": _oanda_candles,
    "finnhub_candles": _finnhub_candles,
}


# --- the structure-aware mutator ----------------------------------------------------------------------

_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_STRING = re.compile(rb'"[^"\\]{0,64}"')
#: What a number may become: the values that poisoned series (NaN, 1e400), their kin, and ints past int64.
NUMBERS = [
    b"NaN",
    b'"NaN"',
    b"nan",
    b"Infinity",
    b"-Infinity",
    b'"inf"',
    b"1e400",
    b"-1e400",
    b'"1e400"',
    b"-0",
    b'"-0"',
    b"0",
    b"0.0",
    b"-1",
    b"1e-400",
    b"1.7976931348623157e308",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"99999999999999999999999",
    b"4294967296",
    b"60000000",
    b"1" * 400,
    b"",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b'"1"',
    b"0x10",
    b"1_000",
    b"\xd9\xa1",
]
STRINGS = [
    b'""',
    b'"NaN"',
    b'"trade"',
    b'"kline"',
    b'"news"',
    b'"PRICE"',
    b'"HEARTBEAT"',
    b'"ping"',
    b'"error"',
    b'"' + b"A" * 5000 + b'"',
    b'"\\u0000"',
    b'"\xff\xfe"',
    b'"\\ud800"',
    b"null",
    b"1",
    b"[]",
    b"{}",
]
INTERESTING = b'"{}[],:|\r\n\x00\xff\\%#$^-.0123456789eE'


class Mutator:
    """Seeded mutations of seed inputs (see the module docstring); one in five inputs is random bytes."""

    def __init__(self, seeds: list[bytes], rng: random.Random) -> None:
        self.seeds = [s for s in seeds if s] or [b"{}"]
        self.rng = rng

    def next(self) -> bytes:
        r = self.rng
        if r.random() < 0.2:
            return r.randbytes(r.choice((0, 1, 2, 8, 64, 512, 4096)))
        data = r.choice(self.seeds)
        for _ in range(r.choice((1, 1, 1, 2, 2, 3, 4))):  # mostly one mutation: most of a frame stays valid
            data = self.mutate(data)
        return data

    def mutate(self, data: bytes) -> bytes:
        r = self.rng
        n = len(data)
        op = r.randrange(11)
        if n == 0:
            return r.randbytes(r.randint(1, 16))
        if op == 0:  # bit flips
            b = bytearray(data)
            for _ in range(r.randint(1, 8)):
                b[r.randrange(n)] ^= 1 << r.randrange(8)
            return bytes(b)
        if op == 1:  # a byte set to an interesting one
            i = r.randrange(n)
            return data[:i] + bytes([r.choice(INTERESTING)]) + data[i + 1 :]
        if op == 2:  # truncation
            return data[: r.randrange(n)]
        if op == 3:  # a span deleted
            i = r.randrange(n)
            return data[:i] + data[i + r.randint(1, 32) :]
        if op == 4:  # a span repeated
            i = r.randrange(n)
            j = min(n, i + r.randint(1, 64))
            return data[:j] + data[i:j] * r.choice((1, 2, 3, 10, 50)) + data[j:]
        if op == 5:  # splice two seeds
            other = r.choice(self.seeds)
            return data[: r.randrange(n + 1)] + other[r.randrange(len(other) + 1) :]
        if op in (6, 7):  # a number substituted
            nums = list(_NUMBER.finditer(data))
            if nums:
                m = r.choice(nums)
                return data[: m.start()] + r.choice(NUMBERS) + data[m.end() :]
        if op == 8:  # a string substituted
            strs = list(_STRING.finditer(data))
            if strs:
                m = r.choice(strs)
                return data[: m.start()] + r.choice(STRINGS) + data[m.end() :]
        if op == 9:  # deep nesting
            depth = r.choice((10, 100, 1000, 5000))
            return b"[" * depth + data + b"]" * r.choice((0, depth))
        i = r.randrange(n + 1)  # random bytes inserted
        return data[:i] + r.randbytes(r.randint(1, 16)) + data[i:]


# --- running --------------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    engine: str
    inputs: int = 0
    escaped: int = 0  # exceptions that escaped the decoder: must be 0
    decoder_bugs: int = 0  # exceptions the decoders' safety nets caught: must be 0 as well
    refused: int = 0  # inputs refused with the decoder's declared error
    skipped: dict[str, int] = field(default_factory=dict)
    peak_mib: float = 0.0  # tracemalloc: peak of Python allocations; rss: the process's peak RSS
    start_mib: float = 0.0  # rss: the peak RSS before the first input (interpreter, imports, seeds)
    seconds: float = 0.0
    memory: str = "tracemalloc"
    first_escape: str = ""

    def ok(self) -> bool:
        return self.escaped == 0 and self.decoder_bugs == 0


class _Runner:
    """Feeds inputs to one target and counts what happens."""

    def __init__(self, name: str, target: Target, engine: str) -> None:
        self.target = target
        self.result = Result(name, engine)

    def feed(self, data: bytes) -> None:
        res = self.result
        res.inputs += 1
        try:
            self.target.run(data)
        except self.target.declared:
            res.refused += 1
        except Exception:
            res.escaped += 1
            if not res.first_escape:
                res.first_escape = f"input {data[:300]!r}\n{traceback.format_exc()}"

    def finish(self, started: float) -> Result:
        res = self.result
        res.seconds = round(time.perf_counter() - started, 2)
        skips = self.target.skips()
        res.decoder_bugs = skips.get("decoder_bug", 0)
        res.skipped = dict(sorted(skips.items()))
        return res


def run_seeded(name: str, count: int, seed: int, measure: str = "tracemalloc") -> Result:
    """``count`` inputs from the seeded mutator into target ``name``, in this process."""
    target = TARGETS[name]()
    runner = _Runner(name, target, "seeded")
    mut = Mutator(target.seeds, random.Random(f"deltafeed-fuzz:{seed}:{name}"))
    prepare = target.prepare
    base = _rss_mib()
    if measure == "tracemalloc":
        tracemalloc.start()
    started = time.perf_counter()
    try:
        for data in target.once + target.seeds:
            runner.feed(data)
        for _ in range(max(0, count - len(target.once) - len(target.seeds))):
            data = mut.next()
            if prepare is not None and mut.rng.random() < 0.5:
                data = prepare(data)
            runner.feed(data)
    finally:
        if measure == "tracemalloc":
            runner.result.peak_mib = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
            tracemalloc.stop()
    res = runner.finish(started)
    if measure == "rss":
        res.memory = "rss"
        res.peak_mib, res.start_mib = round(_rss_mib(), 1), round(base, 1)
    return res


def run_atheris(name: str, count: int, seed: int) -> None:
    """``count`` inputs from atheris (libFuzzer) into target ``name``; prints the Result as JSON and exits.

    libFuzzer never returns from ``Fuzz``, so the target itself stops the process once it has seen
    ``count`` inputs. The custom mutator alternates libFuzzer's mutations with :class:`Mutator`'s.
    """
    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["deltafeed"]):
        target = TARGETS[name]()
    runner = _Runner(name, target, "atheris")
    mut = Mutator(target.seeds, random.Random(f"deltafeed-fuzz:{seed}:{name}"))
    prepare = target.prepare
    base = _rss_mib()
    started = time.perf_counter()

    def one(data: bytes) -> None:
        runner.feed(data)
        if runner.result.inputs >= count:
            res = runner.finish(started)
            res.memory = "rss"
            res.peak_mib, res.start_mib = round(_rss_mib(), 1), round(base, 1)
            sys.stdout.write(json.dumps(asdict(res)) + "\n")
            sys.stdout.flush()
            shutil.rmtree(corpus, ignore_errors=True)
            os._exit(0)

    def custom(data: bytes, max_size: int, libfuzzer_seed: int) -> bytes:
        mut.rng.seed(libfuzzer_seed)
        out = atheris.Mutate(data, max_size) if mut.rng.random() < 0.5 else mut.mutate(data)[:max_size]
        if prepare is not None and mut.rng.random() < 0.25:
            out = prepare(out)
        return out

    corpus = Path(os.environ.get("TMPDIR", "/tmp")) / f"deltafeed-fuzz-{name}-{os.getpid()}"
    corpus.mkdir(parents=True, exist_ok=True)
    for data in target.once:
        runner.feed(data)
    for i, s in enumerate(target.seeds):
        (corpus / f"seed{i}").write_bytes(s)
    # Inputs a little longer than the longest seed: longer ones only repeat what shorter ones reach,
    # and cost time (libFuzzer grows inputs up to max_len).
    max_len = max(1024, 2 * max(len(s) for s in target.seeds))
    args = [
        sys.argv[0],
        f"-seed={seed + 1}",
        f"-max_len={max_len}",
        "-rss_limit_mb=4096",
        "-print_final_stats=0",
        "-close_fd_mask=0",
        str(corpus),
    ]
    atheris.Setup(args, one, custom_mutator=custom)
    atheris.Fuzz()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(name: str, count: int, seed: int, engine: str) -> Result:
    """Run one target in a fresh process (its peak RSS is its own) and read back its Result."""
    cmd = [sys.executable, __file__, "--one", name, "--count", str(count), "--seed", str(seed), "--engine", engine]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return Result(**json.loads(line))
    res = Result(name, engine, escaped=1)
    res.first_escape = (
        f"the {engine} process for {name} exited {proc.returncode} without a result:\n{proc.stderr[-3000:]}"
    )
    return res


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(results: list[Result]) -> None:
    print(
        f"{'target':<16} {'engine':<8} {'inputs':>9} {'escaped':>7} {'bugs':>4} {'refused':>8} "
        f"{'peak MiB':>8} {'(start)':>8} {'mem':<11} {'seconds':>8}  skipped by the decoder"
    )
    for r in results:
        top = ", ".join(f"{k}={v}" for k, v in sorted(r.skipped.items(), key=lambda kv: -kv[1])[:4])
        start = f"{r.start_mib:.1f}" if r.memory == "rss" else "-"
        print(
            f"{r.target:<16} {r.engine:<8} {r.inputs:>9} {r.escaped:>7} {r.decoder_bugs:>4} {r.refused:>8} "
            f"{r.peak_mib:>8.1f} {start:>8} {r.memory:<11} {r.seconds:>8.1f}  {top}"
        )
    for r in results:
        if r.first_escape:
            print(f"\n--- {r.target}: first escaped exception ---\n{r.first_escape}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs per target (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--engine",
        choices=("auto", "atheris", "seeded"),
        default="auto",
        help="auto: atheris when installed, else seeded",
    )
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    ap.add_argument("--in-process", action="store_true", help="seeded, in this process, tracemalloc peaks")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    engine = args.engine if args.engine != "auto" else ("atheris" if _have_atheris() else "seeded")
    if args.one:
        if engine == "atheris":
            run_atheris(args.one, args.count, args.seed)
            return 1  # not reached: run_atheris exits
        print(json.dumps(asdict(run_seeded(args.one, args.count, args.seed, measure="rss"))))
        return 0
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; use {', '.join(TARGETS)}")
    results = []
    for name in names:
        if args.in_process:
            res = run_seeded(name, args.count, args.seed)
        else:
            res = _child(name, args.count, args.seed, engine)
        results.append(res)
        print(
            f"{name}: {res.inputs} inputs, {res.escaped} escaped, {res.decoder_bugs} decoder bugs, {res.seconds:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    print_table(results)
    total = sum(r.inputs for r in results)
    escaped = sum(r.escaped + r.decoder_bugs for r in results)
    print(f"\n{total} inputs over {len(results)} targets; {escaped} escaped or caught as decoder bugs")
    return 0 if escaped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
