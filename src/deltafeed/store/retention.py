"""How long the cold tier keeps candles of each timeframe, and how users override it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from deltafeed.model import TIMEFRAME_FORMS, TIMEFRAMES, BadInput, parse_duration_ms, timeframe

_DAY_MS = 86_400_000

#: Default age limit per timeframe in ms (``None`` keeps candles forever). Short timeframes are
#: numerous and mostly useful while fresh; longer ones are cheap to keep.
DEFAULT_RETENTION_MS: dict[str, int | None] = {
    "1s": _DAY_MS,
    "5s": _DAY_MS,
    "15s": _DAY_MS,
    "1m": 30 * _DAY_MS,
    "5m": 90 * _DAY_MS,
    "15m": 90 * _DAY_MS,
    "1h": 365 * _DAY_MS,
    "4h": 365 * _DAY_MS,
    "1d": None,
}

assert set(DEFAULT_RETENTION_MS) == set(TIMEFRAMES)


def default_retention(tf: str) -> int | None:
    """The default age limit of any timeframe, by its length, in the steps of the standard ones:
    under a minute 1 day, under 5 minutes 30 days, under an hour 90 days, under a day a year, a
    day and longer (weeks, months) forever."""
    grid = timeframe(tf)
    if grid.name in DEFAULT_RETENTION_MS:
        return DEFAULT_RETENTION_MS[grid.name]
    for below, keep in (
        (60_000, _DAY_MS),
        (300_000, 30 * _DAY_MS),
        (3_600_000, 90 * _DAY_MS),
        (_DAY_MS, 365 * _DAY_MS),
    ):
        if grid.ms < below:
            return keep
    return None


_FOREVER = frozenset({"forever", "never", "none", "inf"})


def parse_retention(
    spec: Mapping[str, str | int | None],
    base: Mapping[str, int | None] | None = None,
    timeframes: Iterable[str] = (),
) -> dict[str, int | None]:
    """Turn ``{"1m": "30d", "1d": "forever"}`` into a retention map in ms.

    The result is ``base`` (by default :data:`DEFAULT_RETENTION_MS`) with the given timeframes
    overridden; pass ``base={}`` to get only what ``spec`` names. A value may be a duration string
    (``90s``, ``12h``, ``30d``, ``2w``), ``"forever"``, ``None`` (forever) or an int of ms. A
    retention shorter than the timeframe itself would delete every candle as soon as it is written,
    so it is refused. ``timeframes`` (a run's) get their :func:`default_retention` unless ``base``
    or ``spec`` name them.
    """
    out: dict[str, int | None] = dict(DEFAULT_RETENTION_MS if base is None else base)
    for tf in timeframes:
        name = timeframe(tf).name
        if name not in out:
            out[name] = default_retention(name)
    for tf, value in spec.items():
        try:
            tf_name = timeframe(tf.strip()).name
        except BadInput:
            raise BadInput(f"retention names unknown timeframe {tf!r}; use {TIMEFRAME_FORMS}") from None
        ms: int | None
        if value is None:
            ms = None
        elif isinstance(value, bool):
            raise BadInput(f"retention for {tf_name}: {value!r} is not a duration; write e.g. 30d or forever")
        elif isinstance(value, int):
            ms = value
        elif value.strip().lower() in _FOREVER:
            ms = None
        else:
            try:
                ms = parse_duration_ms(value)
            except BadInput:
                raise BadInput(
                    f"retention for {tf_name}: cannot read {value!r}; write a duration such as 36h, 30d, 2w"
                    " or 'forever'"
                ) from None
        if ms is not None and ms < timeframe(tf_name).ms:
            raise BadInput(
                f"retention for {tf_name} is {value!r}, shorter than one {tf_name} candle, so nothing would"
                f" be kept; give at least {tf_name} or write 'forever'"
            )
        out[tf_name] = ms
    return out
