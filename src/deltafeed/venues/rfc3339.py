"""RFC 3339 UTC times as venues write them (``2019-08-14T20:42:27.265Z``), parsed fast: the day's
midnight is cached, the rest is sliced, and anything else is a ValueError (a decoder counts and skips it)."""

from __future__ import annotations

import calendar
import time

_DAYS: dict[str, int] = {}  # "YYYY-MM-DD" -> epoch ms of its midnight


def iso_ms(s: str) -> int:
    """Epoch ms of an RFC 3339 UTC time (``2019-08-14T20:42:27.265Z``, up to
    nanoseconds, or without a fraction); ValueError for anything else."""
    if len(s) < 20 or s[10] != "T" or s[-1] != "Z" or s[13] != ":" or s[16] != ":":
        raise ValueError(f"not an RFC 3339 UTC time: {s[:40]!r}")
    day = s[:10]
    base = _DAYS.get(day)
    if base is None:
        y, mo, d = int(day[:4]), int(day[5:7]), int(day[8:10])
        if day[4] != "-" or day[7] != "-" or not (1 <= mo <= 12 and 1 <= d <= 31):
            raise ValueError(f"not an RFC 3339 date: {day!r}")
        base = calendar.timegm((y, mo, d, 0, 0, 0)) * 1000
        if len(_DAYS) < 4096:
            _DAYS[day] = base
    h, mi, sec = int(s[11:13]), int(s[14:16]), int(s[17:19])
    if not (h < 24 and mi < 60 and sec < 61):
        raise ValueError(f"not an RFC 3339 time: {s[:40]!r}")
    ms = 0
    if len(s) > 20:
        if s[19] != "." or not s[20:-1].isdigit():
            raise ValueError(f"not an RFC 3339 fraction: {s[:40]!r}")
        ms = int((s[20:23] + "00")[:3])
    return base + ((h * 60 + mi) * 60 + sec) * 1000 + ms


def iso_us(s: str) -> int:
    """Epoch microseconds of an RFC 3339 UTC time (digits past the sixth are dropped); ValueError as
    :func:`iso_ms`."""
    ms = iso_ms(s)
    return ms * 1000 + (int((s[20:-1] + "000000")[3:6]) if len(s) > 20 else 0)


def us_iso(us: int) -> str:
    """``2023-02-09T20:32:50.714964Z`` for epoch microseconds (the inverse of :func:`iso_us`)."""
    sec, frac = divmod(us, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(sec))}.{frac:06d}Z"
