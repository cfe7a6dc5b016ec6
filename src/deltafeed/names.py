"""The names a user may give a collected series, resolved to the one deltafeed stores it under.

A series is stored as ``venue:SYMBOL`` in the venue's own spelling (``binance:BTCUSDT``), with
``@bid``/``@ask`` for a quote-built instrument's other sides. Users also name it:

- by ccxt's unified symbol, with or without the venue: ``binance:BTC/USDT``, ``BTC/USDT``;
- by an alias from the settings (``aliases = { "ETH-PERP" = "hyperliquid:ETH" }``);
- by a bare symbol, taken on the run's default venue (``BTCUSDT``), or on whichever venue is the
  only one collecting it.

:func:`resolve` answers with the stored name, or raises :class:`BadInput` for a malformed name and
:class:`UnknownName` (also a :class:`LookupError`) for a well-formed one that is not collected,
listing some that are. The HTTP API, the WebSocket hub, the CLI and the settings all resolve names
here, so a name that works in one place works in every other.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from deltafeed.model import BadInput, Instrument, canonical_series
from deltafeed.venues import registry


class UnknownName(BadInput, LookupError):
    """A well-formed name that no collected series answers to."""


def resolve(
    name: str,
    known: list[str] | tuple[str, ...],
    *,
    aliases: Mapping[str, str] | None = None,
    default_venue: str | None = None,
) -> str:
    """The stored series name ``name`` means among ``known`` (see the module docstring)."""
    text = name.strip()
    if aliases:
        target = _upper_keys(tuple(aliases.items())).get(text.upper())
        if target is not None:
            text = target
    base, at, side = text.partition("@")
    suffix = f"@{side.strip().lower()}" if at else ""
    index = _index(tuple(known))
    try:
        canonical = canonical_series(text)
    except BadInput:
        canonical = None
    if canonical is not None and canonical in index.known:
        return canonical
    if _own_prefix(base, default_venue):
        own = canonical_series(f"{default_venue}:{text}")
        if own in index.known:
            return own
    venue, colon, symbol = base.partition(":")
    venue = venue.strip().lower()
    if colon and registry.known(venue):
        found = index.unified.get((venue, symbol.strip().upper()))
        if found is not None and found + suffix in index.known:
            return found + suffix
    else:
        bare = base.strip().upper()
        if default_venue is not None:
            for candidate in (f"{default_venue}:{bare}", index.unified.get((default_venue, bare))):
                if candidate is not None and candidate + suffix in index.known:
                    return candidate + suffix
        matches = index.by_symbol.get(bare, ())
        if len(matches) == 1 and matches[0] + suffix in index.known:
            return matches[0] + suffix
        if len(matches) > 1:
            raise UnknownName(f"{name!r} is collected on several venues; name one: {', '.join(matches)}")
    if canonical is None:  # malformed, not merely unknown: the parser's BadInput names the fix
        canonical_series(text if colon else f"{default_venue or 'venue'}:{text}")
    some = ", ".join(known[:10]) + (f" ({len(known)} in all)" if len(known) > 10 else "")
    raise UnknownName(f"instrument {name!r} is not collected here; choose one of {some or '(none yet)'}")


def native(name: str, default_venue: str | None = None) -> str:
    """A name from the settings or the command line as the instrument it stores (``venue:SYMBOL``):
    a unified symbol (``binance:BTC/USDT``) in the venue's own spelling. The price side, if any, is
    kept. :class:`BadInput` when it is malformed or names no venue."""
    base, at, side = name.strip().partition("@")
    if _own_prefix(base, default_venue):
        base = f"{default_venue}:{base}"
    inst = Instrument.parse(base, default_venue=default_venue)
    if "/" in inst.symbol:
        venue = registry.get(inst.venue)
        spelled = venue.native_symbol(inst.symbol)
        if spelled is not None and venue.unified_symbol(spelled) is not None:
            inst = Instrument(inst.venue, spelled.upper())
    return str(inst) + (f"@{side.strip().lower()}" if at else "")


def _own_prefix(base: str, default_venue: str | None) -> bool:
    """Whether the prefix of ``EXCHANGE:SYMBOL`` belongs to a symbol of the default venue rather
    than naming a venue: the default venue spells symbols that way (Finnhub's ``BINANCE:BTCUSDT``,
    Bybit's ``LINEAR:BTCUSDT``) and the prefix is no venue's name (venue names are lower case)."""
    prefix, colon, _ = base.strip().partition(":")
    if not colon or default_venue is None:
        return False
    venue = registry.find(default_venue)
    return venue is not None and venue.prefixed_symbols and (prefix != prefix.lower() or not registry.known(prefix))


class _Index:
    """A list of collected series looked up by stored name, by (venue, unified symbol), and by
    bare symbol or unified symbol across venues."""

    def __init__(self, known: tuple[str, ...]) -> None:
        self.known = frozenset(known)
        self.unified: dict[tuple[str, str], str] = {}
        by_symbol: dict[str, dict[str, None]] = {}
        for series in known:
            instrument = series.partition("@")[0]
            venue, _, symbol = instrument.partition(":")
            by_symbol.setdefault(symbol, {})[instrument] = None
            v = registry.find(venue)
            unified = None if v is None else v.unified_symbol(symbol)
            if unified is not None:
                self.unified.setdefault((venue, unified.upper()), instrument)
                by_symbol.setdefault(unified.upper(), {})[instrument] = None
        self.by_symbol = {k: tuple(v) for k, v in by_symbol.items()}


@functools.lru_cache(maxsize=8)
def _index(known: tuple[str, ...]) -> _Index:
    return _Index(known)


@functools.lru_cache(maxsize=8)
def _upper_keys(items: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return {k.strip().upper(): v for k, v in items}
