"""A streaming HTTP connection whose body is JSON lines (OANDA's pricing stream), kept alive like WsStream.

OANDA streams prices as one long chunked ``GET`` answer, one JSON object per line, with a HEARTBEAT line
every few seconds. :class:`LineStream` keeps that request open, cuts the body into lines and hands each
to a callback; it notices a silent connection, reconnects with backoff, and never opens connections
faster than the venue allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping

import aiohttp

from deltafeed.clock import LIVE, Clock
from deltafeed.net.reconnect import Backoff, ConnectBudget, retry_after_s, sleep_unless

log = logging.getLogger("deltafeed.lines")

LineSink = Callable[[bytes], None]

#: OANDA rejects more than 2 new connections per second per IP. One budget per process, shared by
#: every LineStream (and OandaHistory's REST connections) that is not given its own.
PROCESS_BUDGET = ConnectBudget(2, 1.0)

_FATAL = (401, 403)  # the credentials are wrong: retrying cannot help


class StreamUnauthorized(Exception):
    """The server refused the credentials (HTTP 401/403); :meth:`LineStream.run` stops with this."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class _LineTooLong(Exception):
    pass


class LineStream:
    """Keeps one streaming ``GET url_fn()`` open and feeds every complete body line to ``on_line``.

    - Lines: the body is read chunk by chunk as it arrives; a line split across chunks is joined, several
      lines in one chunk are split with one ``bytes.split``. ``on_line`` gets each non-empty line without
      its ``\\n`` (or ``\\r\\n``) as ``bytes``, which it may keep. It must not raise: an exception ends
      :meth:`run` with it (a bug in the sink is not hidden).
    - Liveness: any line, HEARTBEAT included, is a sign of life; no line for ``stale_after_s`` (also
      while waiting for the answer's headers) drops the connection (``stale_drops``). A line longer than
      ``max_line_bytes`` drops it too.
    - Reconnect: after any drop or end of the body, by the :class:`~deltafeed.net.reconnect.Backoff`
      policy (exponential, full jitter, capped at ``backoff_cap_s``, starting over once a connection
      stayed up ``stable_after_s``). A 429 waits at least its ``Retry-After``; 5xx and other answers
      back off the same way. ``clock`` and ``rng`` drive the waiting and the jitter.
    - Credentials: 401 or 403 logs one error line (naming ``auth_hint``, never the token) and
      :meth:`run` raises :class:`StreamUnauthorized` instead of retrying forever.
    - Every attempt first waits for ``budget`` (default :data:`PROCESS_BUDGET`, 2 per second).
    - ``on_connect(stream)`` runs after every 200 answer and ``on_disconnect(stream, why)`` after every
      drop of a connected stream, so the owner can mark a possible gap each time.
    """

    def __init__(
        self,
        url_fn: Callable[[], str],
        on_line: LineSink,
        *,
        headers: Mapping[str, str] | None = None,
        name: str = "lines",
        stale_after_s: float = 10.0,
        budget: ConnectBudget | None = None,
        on_connect: Callable[[LineStream], None] | None = None,
        on_disconnect: Callable[[LineStream, str], None] | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        stable_after_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        max_line_bytes: int = 1 << 20,
        auth_hint: str = "set OANDA_TOKEN to a valid OANDA v20 token",
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url_fn = url_fn
        self.on_line = on_line
        self.name = name
        self.stale_after_s = stale_after_s
        self.budget = budget or PROCESS_BUDGET
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stable_after_s = stable_after_s
        self.connect_timeout_s = connect_timeout_s
        self.max_line_bytes = max_line_bytes
        self.auth_hint = auth_hint
        self.clock: Clock = clock or LIVE
        self.backoff = Backoff(backoff_base_s, backoff_cap_s, stable_after_s, rng=rng, clock=self.clock)
        self._headers = dict(headers or {})
        self._secrets = _secrets(self._headers)
        # counters, as WsStream's
        self.frames = 0  # complete non-empty lines handed to on_line
        self.connects = 0  # 200 answers
        self.attempts = 0
        self.stale_drops = 0
        self.bytes_in = 0
        self.refusals: Counter[int] = Counter()  # non-200 answers by status
        self.last_disconnect = ""
        self.error: StreamUnauthorized | None = None
        self.connected_at = 0.0  # monotonic time of the current connection, 0 when down
        self.connected = asyncio.Event()
        self._stopping = False
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._deadline: asyncio.Timeout | None = None
        self._drop_reason = ""

    def __repr__(self) -> str:  # the headers carry the token: never show them
        return f"<LineStream {self.name} connects={self.connects} lines={self.frames}>"

    # --- control --------------------------------------------------------------------------------

    def send(self, text: bytes) -> None:
        """An HTTP stream takes no messages (its URL names what it carries): a bug to try."""
        raise TypeError(f"{self.name}: an HTTP stream takes no messages")

    def drop(self, why: str) -> None:
        """Abandon the current connection; :meth:`run` reconnects (with backoff)."""
        self._drop_reason = why
        self._fire_now()

    async def close(self) -> None:
        """Stop: end the current connection and make :meth:`run` return (waits up to 2 s for it)."""
        self._stopping = True
        self._stop.set()
        self._fire_now()
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), 2.0)

    def _fire_now(self) -> None:
        d = self._deadline
        if d is not None:
            with contextlib.suppress(RuntimeError):  # already expiring or exited
                d.reschedule(asyncio.get_running_loop().time())

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect after every drop, until :meth:`close` (or a 401/403, which raises)."""
        self._running = True
        self._done.clear()
        backoff = self.backoff
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s)
        try:
            async with aiohttp.ClientSession(headers=self._headers, timeout=timeout) as session:
                while not self._stopping:
                    await self.budget.acquire()
                    if self._stopping:
                        break
                    url = self.url_fn()
                    self.attempts += 1
                    why, up_s, status, retry_after = await self._attempt(session, url)
                    if self.connected_at:
                        self._disconnected(why)
                    if self._stopping:
                        break
                    if status in _FATAL:
                        msg = (
                            f"{self.name}: {_short(url)} refused the credentials ({why}); {self.auth_hint}. "
                            "Not retrying."
                        )
                        log.error("%s", msg)
                        self.error = StreamUnauthorized(status or 0, msg)
                        raise self.error
                    if up_s is not None and up_s >= self.stable_after_s:
                        backoff.reset()  # it was up long enough: this drop counts as the first
                    delay = backoff.failed(retry_after)
                    log.warning("%s: %s; reconnecting in %.2f s", self.name, why, delay)
                    await self._sleep(delay)
        finally:
            if self.connected_at:
                self._disconnected("closed")
            self._running = False
            self._done.set()

    async def _attempt(self, session: aiohttp.ClientSession, url: str) -> tuple[str, float | None, int | None, float]:
        """One request: (why it ended, seconds it was connected or None, refused status, Retry-After s)."""
        loop = asyncio.get_running_loop()
        self._drop_reason = ""
        status: int | None = None
        retry_after = 0.0
        why = "the server ended the stream"
        deadline = asyncio.timeout(self.stale_after_s)
        try:
            async with deadline:
                self._deadline = deadline
                try:
                    async with session.get(url) as resp:
                        if resp.status != 200:
                            status = resp.status
                            self.refusals[status] += 1
                            body = await resp.content.read(300)
                            why = f"HTTP {status} {self._redact(body.decode(errors='replace')).strip()}"
                            if status == 429:
                                retry_after = retry_after_s(resp.headers.get("Retry-After"))
                        else:
                            self._connected()
                            await self._read(resp.content, deadline, loop)
                finally:
                    self._deadline = None
        except TimeoutError as exc:
            if self._stopping:
                why = "closed"
            elif self._drop_reason:
                why = f"dropped: {self._drop_reason}"
            elif deadline.expired():
                if self.connected_at:
                    self.stale_drops += 1
                    why = f"no data for {self.stale_after_s:g} s"
                else:
                    why = f"no answer within {self.stale_after_s:g} s"
            else:  # aiohttp's own connect timeout
                why = f"connect timed out ({self._redact(str(exc)) or type(exc).__name__})"
        except (aiohttp.ClientError, OSError) as exc:
            why = "closed" if self._stopping else f"{type(exc).__name__}: {self._redact(str(exc))}"
        except _LineTooLong:
            why = f"a line longer than {self.max_line_bytes} bytes"
        up_s = self.clock.monotonic() - self.connected_at if self.connected_at else None
        return why, up_s, status, retry_after

    async def _read(
        self, content: aiohttp.StreamReader, deadline: asyncio.Timeout, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Cut the body into lines until it ends; every chunk that completes a line pushes the deadline."""
        on_line = self.on_line
        stale = self.stale_after_s
        parts: list[bytes] = []  # the start of a line still arriving
        pending = 0
        while True:
            chunk = await content.readany()
            if not chunk:
                return  # end of body
            self.bytes_in += len(chunk)
            if b"\n" not in chunk:
                parts.append(chunk)
                pending += len(chunk)
                if pending > self.max_line_bytes:
                    raise _LineTooLong
                continue
            if parts:  # only a split line costs a join
                parts.append(chunk)
                chunk = b"".join(parts)
                parts.clear()
            lines = chunk.split(b"\n")
            tail = lines.pop()
            deadline.reschedule(loop.time() + stale)
            for line in lines:
                if line[-1:] == b"\r":
                    line = line[:-1]
                if line:
                    self.frames += 1
                    on_line(line)
            pending = len(tail)
            if tail:
                parts.append(tail)
                if pending > self.max_line_bytes:
                    raise _LineTooLong

    # --- state ----------------------------------------------------------------------------------

    def _connected(self) -> None:
        self.connects += 1
        self.connected_at = self.clock.monotonic()
        self.connected.set()
        if self.on_connect is not None:
            self.on_connect(self)

    def _disconnected(self, why: str) -> None:
        self.connected_at = 0.0
        self.connected.clear()
        self.last_disconnect = why
        if self.on_disconnect is not None:
            self.on_disconnect(self, why)

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` s, or less if :meth:`close` is called meanwhile."""
        await sleep_unless(self.clock, delay, self._stop)

    def _redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text


def _secrets(headers: Mapping[str, str]) -> list[str]:
    """The credential strings in ``headers`` (the whole Authorization value and its token part)."""
    out: list[str] = []
    for k, v in headers.items():
        if k.lower() in ("authorization", "proxy-authorization") and v:
            out.append(v)
            token = v.partition(" ")[2]
            if len(token) >= 4:
                out.append(token)
    return out


def _short(url: str) -> str:
    """The URL without its query (the instrument list can be long)."""
    return url.partition("?")[0]
