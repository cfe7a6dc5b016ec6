"""A series' REST history of any timeframe: what the venue's history serves is fetched as it is;
any other timeframe is rolled up from the longest served one that divides it (``45s`` from ``15s``,
``2h`` from ``1h``, ``1w`` and ``1M`` from ``1d``), so no venue client needs to know every timeframe."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deltafeed.candles.rollup import rollup
from deltafeed.model import TIMEFRAMES, BadInput, Candle, monday_weeks, timeframe, timeframe_ms
from deltafeed.venues import registry

if TYPE_CHECKING:
    from deltafeed.series import Series


def served(venue: str) -> tuple[str, ...]:
    """The timeframes ``venue``'s history client serves itself (the standard ones unless it says)."""
    own = registry.get(venue).timeframes
    own = tuple(TIMEFRAMES) if own is None else own
    if not monday_weeks():  # the venues' own weeks start on Monday; ours do not: roll them up
        own = tuple(tf for tf in own if tf != "1w")
    return own


def source(venue: str, tf: str) -> str | None:
    """The timeframe ``tf``'s history is rolled up from at ``venue``: None when the venue serves
    ``tf`` itself, else the longest served timeframe that divides it; :class:`BadInput` when none
    does (e.g. ``45s`` at a venue whose history starts at 1 minute)."""
    own = served(venue)
    if tf in own:
        return None
    grid = timeframe(tf)
    parts = [b for b in own if timeframe(b).divides(grid) and timeframe_ms(b) < grid.ms]
    if not parts:
        raise BadInput(
            f"{venue} has no history that makes {tf} candles (it serves {' '.join(own)}); "
            f"choose a timeframe one of those divides"
        )
    return max(parts, key=timeframe_ms)


def page_span_ms(st: Series, tf: str) -> int:
    """A span of ``tf`` candles whose history takes about one request, in whole candles."""
    base = source(st.instrument.venue, tf)
    if base is None:
        return st.feed.page_span_ms(tf)
    span = st.feed.page_span_ms(base)
    grid = timeframe(tf)
    return max(grid.ms, span - span % grid.ms)


async def history(st: Series, tf: str, start_ms: int, end_ms: int, now_ms: int | None = None) -> list[Candle]:
    """Candles of ``tf`` opening in [start_ms, end_ms] from the venue's history, oldest first.

    A rolled-up candle is closed when all its parts are and it ends where its last part ends (at a
    venue that leaves out intervals without prices: when it ended by the venue's clock), and final
    only when every part is final: closed means true for derived history too.
    """
    base = source(st.instrument.venue, tf)
    if base is None:
        return await st.feed.candles(st, tf, start_ms, end_ms, now_ms)
    grid = timeframe(tf)
    first = grid.start(start_ms)
    stop = grid.end(end_ms)  # whole candles only: a part outside [start, end] still belongs to one
    parts = await st.feed.candles(st, base, first, stop - 1, now_ms)
    now = now_ms if now_ms is not None else st.feed.clock.now_ms()
    until = now if st.feed.omits_empty else None
    # A venue that leaves out intervals without prices sends no flat placeholders: every part counts,
    # even one without a trade count (IB's quote bars).
    rolled = rollup(parts, base, grid, until_ms=until, placeholders=not st.feed.omits_empty)
    return [c for c in rolled if c.open_time <= end_ms]
