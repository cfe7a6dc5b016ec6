"""A local Dukascopy tick-history server: ``.bi5`` hour files generated from a seeded quote market.

Serves ``GET /datafeed/{SYMBOL}/{YYYY}/{MM}/{DD}/{HH}h_ticks.bi5`` (zero-based month) as
``datafeed.dukascopy.com`` does (see ../shared/PROTOCOLS.md section 8 and
:mod:`deltafeed.venues.dukascopy.codec`), so :class:`~deltafeed.venues.dukascopy.rest.DukascopyHistory`
and third-party downloaders work with only the base URL changed.

Quotes come from :class:`~deltafeed.replicas.quotes.QuoteSim`, which is deterministic however it is
sliced, so an hour file is a pure function of (seed, symbol, hour) and is built on first request and
cached. The market runs on a :class:`~deltafeed.replicas.sim.MarketClock` with the Binance replica's
semantics: it reads ``start_ms`` (default: now) at start-up and advances ``speed`` times faster than
the wall clock; the market opened ``history_ms`` before ``start_ms``.

What each hour answers, judged by the market clock:

- an hour that has not ended yet (the current hour and the future): 404, as Dukascopy answers for
  files it has not published; it publishes an hour only after it is over, never a partial file;
- an hour that ended before the market opened: 200 with an empty body (there were no quotes);
- any other hour: 200 with the hour's quotes from the market's opening on; an hour in which the FX
  market was closed (weekend, holiday) holds no quotes and so is an empty body, as at Dukascopy;
- an unknown symbol, or a path that is not an hour file: 404.

The tape (``tape=``, optional) is the shared quote tape (:mod:`deltafeed.replicas.tape`:
``symbol,time_ms,bid,ask``, Dukascopy symbol names, prices at the file's precision) of every quote the
replica serves: each hour's quotes are written once, when the hour is first built, so hours appear in
the order clients first asked for them, and an hour never asked for is not on the tape.

Faults (``faults=``, see :mod:`deltafeed.replicas.faults`): only the REST kinds apply (``http500``,
``http429``, ``slow``); the WebSocket kinds are refused, since this server has no connections to hit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from aiohttp import web

from deltafeed.model import BadInput, Quote
from deltafeed.replicas.faults import REST_KINDS, FaultSchedule, parse_faults
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.quotes import QuoteSim, SessionCalendar
from deltafeed.replicas.server import ReplicaBase
from deltafeed.replicas.server import serve as serve_replica
from deltafeed.replicas.sim import MarketClock
from deltafeed.replicas.tape import TapeWriter
from deltafeed.venues.dukascopy import codec as codec

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("EURUSD", "USDJPY", "GBPUSD")
PREFIX = "/datafeed/"
CACHE_HOURS = 512  # hour files kept encoded (a few kB to a few hundred kB each)


class QuoteSource(Protocol):
    """What the replica needs from a market: every quote of a symbol (OANDA name) in ``[start_ms, end_ms)``."""

    def quotes(self, symbol: str, start_ms: int, end_ms: int) -> list[Quote]: ...


def check_faults(faults: str | Mapping[str, float] | None) -> dict[str, float]:
    """The fault rates of ``faults``; :class:`BadInput` for a kind this HTTP-only replica cannot inject."""
    rates = parse_faults(faults) if isinstance(faults, str) else dict(faults or {})
    for kind in rates:
        if kind not in REST_KINDS:
            raise BadInput(
                f"fault kind {kind!r} does not apply to the Dukascopy replica (HTTP files only); "
                f"use {', '.join(REST_KINDS)}"
            )
    return rates


class DukascopyReplica(ReplicaBase):
    """Dukascopy's tick-file server on one port. See the module docstring for what each hour answers.

    ``symbols`` may be written ``EURUSD`` or ``EUR_USD``; ``rate`` is QuoteSim's quote rate. ``source``
    replaces the QuoteSim (tests); ``calendar`` is passed to QuoteSim. ``stats`` counts requests,
    hour files by kind, quotes and bytes served, and injected faults (``fault_<kind>``).
    """

    fault_kinds = REST_KINDS

    venue = "dukascopy"
    _log = log
    pumps = False

    def __init__(
        self,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        seed: int = 1,
        rate: float = 2.0,
        speed: float = 1.0,
        history_ms: int = 7 * 86_400_000,
        start_ms: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: str | Mapping[str, float] | FaultSchedule | None = None,
        *,
        faults_seed: int = 0,
        slow_s: float = 2.0,
        calendar: SessionCalendar | None = None,
        source: QuoteSource | None = None,
        tape: str | Path | None = None,
        options: ReplicaOptions | None = None,
    ) -> None:
        # A ready schedule may be passed instead of rates (tests drive one by a hand-moved clock).
        ready = faults if isinstance(faults, FaultSchedule) else None
        rates = check_faults(None if isinstance(faults, FaultSchedule) else faults)
        o = options_from(
            options, host=host, port=port, symbols=symbols, seed=seed, rate=rate, speed=speed, start_ms=start_ms,
            history_ms=history_ms, tape=tape, faults=rates, faults_seed=faults_seed,
        )  # fmt: skip
        self.options = o
        assert o.symbols is not None and o.rate is not None and o.history_ms is not None  # resolved
        if o.history_ms < 0:
            raise BadInput(f"history must not be negative, got {o.history_ms} ms")
        self.symbols: dict[str, str] = {}  # Dukascopy name -> OANDA name (QuoteSim's)
        for s in o.symbols:
            name = codec.dukascopy_symbol(s)
            codec.price_scale(name)  # a symbol we cannot encode is refused at start-up, not per request
            self.symbols[name] = codec.oanda_symbol(name)
        if not self.symbols:
            raise BadInput("no symbols; give at least one, e.g. EURUSD")
        self.host = o.host
        self.port = o.port
        self.slow_s = slow_s
        self._clock = MarketClock(o.speed, o.start_ms)
        self.origin_ms = self._clock.start_ms - o.history_ms
        if source is None:
            source = QuoteSim(list(self.symbols.values()), seed=o.seed, rate=o.rate, calendar=calendar)
        self._source = source
        schedule = ready if ready is not None else FaultSchedule(check_faults(o.faults), o.faults_seed)
        check_faults(schedule.rates)
        #: The quote tape (None without one); written from the worker thread, closed by :meth:`stop`.
        self.tape = TapeWriter.quotes(o.tape) if o.tape is not None else None
        self._taped: set[tuple[str, int]] = set()  # hours already on the tape (touched by the worker only)
        self.stats: dict[str, int] = {
            "requests": 0,
            "hours": 0,  # hour files with quotes
            "empty_hours": 0,
            "not_found": 0,
            "quotes": 0,
            "bytes_sent": 0,
            "cache_hits": 0,
        }
        self._setup_faults(schedule)
        self._cache: OrderedDict[tuple[str, int], tuple[bytes, int]] = OrderedDict()
        self._inflight: dict[tuple[str, int], asyncio.Future[tuple[bytes, int]]] = {}
        # Quote generation and LZMA run off the event loop, one hour at a time: other requests (cached
        # hours, 404s) are answered meanwhile, and the quote source is never called concurrently.
        self._executor: ThreadPoolExecutor | None = None

    # -- public surface --

    @property
    def url(self) -> str:
        """``http://HOST:PORT/datafeed``: the base URL hour paths are appended to (the real port once started)."""
        return f"http://{self.netloc}{PREFIX.rstrip('/')}"

    def hour_file(self, symbol: str, hour_start_ms: int) -> bytes:
        """The body served for a complete hour (no clock check, no faults, no cache): for tests and tools.

        Runs on the replica's worker thread while it serves, since the quote source is not thread-safe.
        """
        name = codec.dukascopy_symbol(symbol)
        if self._executor is not None:
            return self._executor.submit(self._build, name, hour_start_ms).result()[0]
        return self._build(name, hour_start_ms)[0]

    async def start(self) -> str:
        """Bind and start serving; returns :attr:`url`."""
        url = await super().start()
        # Set before any request can run: nothing is awaited between binding and here.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dukascopy-replica")
        return url

    @property
    def tape_path(self) -> Path | None:
        """Where the tape is written (None without one); complete once :meth:`stop` has closed it."""
        return self.tape.path if self.tape is not None else None

    async def stop(self) -> None:
        """Stop serving, drop pending builds and close the tape (a build still running writes nothing more)."""
        await self._stop_server()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self.tape is not None:
            self.tape.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"dukascopy replica stopped: requests={s['requests']} hours={s['hours']} "
            f"empty_hours={s['empty_hours']} not_found={s['not_found']} quotes={s['quotes']} "
            f"bytes_sent={s['bytes_sent']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    # -- HTTP --

    async def _http(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        if self.faults is not None:
            fault = await self._fault()
            if fault is not None:
                return fault
        path = request.path
        if not path.startswith(PREFIX):
            return self._not_found()
        try:
            symbol, hour = codec.parse_tick_path(path[len(PREFIX) :])
        except ValueError:
            return self._not_found()
        if symbol not in self.symbols or hour + codec.HOUR_MS > self._clock.now_ms():
            return self._not_found()  # unknown, or not published yet: the hour is not over
        body, n = await self._file(symbol, hour)
        if n:
            self.stats["hours"] += 1
            self.stats["quotes"] += n
        else:
            self.stats["empty_hours"] += 1
        self.stats["bytes_sent"] += len(body)
        return web.Response(body=body, headers={"Content-Type": "application/octet-stream"})

    async def _file(self, symbol: str, hour: int) -> tuple[bytes, int]:
        """The encoded file of a complete hour and its quote count, from the cache or built once.

        The cache is touched on the event loop only; concurrent requests for an hour being built
        wait for that one build.
        """
        key = (symbol, hour)
        hit = self._cache.get(key)
        if hit is not None:
            self.stats["cache_hits"] += 1
            self._cache.move_to_end(key)
            return hit
        fut = self._inflight.get(key)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._executor, self._build, symbol, hour, True)
            self._inflight[key] = fut
            try:
                out = await asyncio.shield(fut)  # a cancelled first requester must not cancel the build
            finally:
                del self._inflight[key]
            self._cache[key] = out
            while len(self._cache) > CACHE_HOURS:
                self._cache.popitem(last=False)
            return out
        return await asyncio.shield(fut)

    def _build(self, symbol: str, hour: int, served: bool = False) -> tuple[bytes, int]:
        """The file of a complete hour: a pure function of (seed, symbol, hour), so cacheable. A ``served``
        hour goes on the tape (:meth:`hour_file`'s do not: they are not served)."""
        lo = max(hour, self.origin_ms)
        end = hour + codec.HOUR_MS
        quotes = self._source.quotes(self.symbols[symbol], lo, end) if lo < end else []
        if served and self.tape is not None and (symbol, hour) not in self._taped:
            # An hour evicted from the cache and built again is on the tape already.
            self._taped.add((symbol, hour))
            decimals = len(str(codec.price_scale(symbol))) - 1
            self.tape.write(
                symbol,
                [q.time_ms for q in quotes],
                [f"{q.bid:.{decimals}f}" for q in quotes],
                [f"{q.ask:.{decimals}f}" for q in quotes],
            )
        return codec.encode_bi5(quotes, hour, symbol), len(quotes)

    def _not_found(self) -> web.Response:
        self.stats["not_found"] += 1
        # Dukascopy's CDN answers a missing file with a small HTML page; the body does not matter.
        return web.Response(status=404, text="404 Not Found", content_type="text/html")

    async def _fault(self) -> web.Response | None:
        """Faults due on this request: ``slow`` delays it; ``http500`` or ``http429`` answers it instead
        (one per request; the other stays due for the next)."""
        f = self.faults
        assert f is not None
        if f.due("slow"):
            self._injected("slow")
            await asyncio.sleep(self.slow_s)
        if f.due("http500"):
            self._injected("http500")
            return web.Response(status=500, text="500 Internal Server Error", content_type="text/html")
        if f.due("http429"):
            self._injected("http429")
            return web.Response(
                status=429, text="429 Too Many Requests", content_type="text/html", headers={"Retry-After": "1"}
            )
        return None


async def serve(replica: DukascopyReplica) -> None:
    """Run ``replica`` until SIGINT or SIGTERM. Prints ``listening on http://HOST:PORT`` first, a summary last.

    The first line names the server's root, as the other replicas' do; the data lives under
    :attr:`DukascopyReplica.url` (root + ``/datafeed``).
    """

    def banner(url: str) -> list[str]:
        return [
            f"listening on {url.removesuffix(PREFIX.rstrip('/'))}",
            f"tick files under {url}/SYMBOL/YYYY/MM/DD/HHh_ticks.bi5 (month zero-based)",
        ]

    await serve_replica(replica, banner)
