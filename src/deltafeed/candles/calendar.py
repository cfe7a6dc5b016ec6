"""Market calendars: when a venue is expected to trade, so that a closed market is not a gap."""

from __future__ import annotations

from typing import Protocol


class Calendar(Protocol):
    """Says whether data is expected at a moment (epoch ms)."""

    name: str

    def is_open(self, time_ms: int) -> bool: ...

    def open_between(self, start_ms: int, end_ms: int) -> bool:
        """Whether the market is open at any moment of [start_ms, end_ms)."""
        ...


class AlwaysOpen:
    """Crypto venues trade around the clock, every day of the year."""

    name = "crypto"

    def is_open(self, time_ms: int) -> bool:
        return True

    def open_between(self, start_ms: int, end_ms: int) -> bool:
        return end_ms > start_ms


CALENDARS: dict[str, Calendar] = {"crypto": AlwaysOpen()}
VENUE_CALENDAR = {"binance": "crypto"}
