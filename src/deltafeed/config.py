"""Settings of a deltafeed run: defaults, the TOML config file, and command-line overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from deltafeed.model import BadInput, Instrument, parse_duration_ms, parse_timeframes
from deltafeed.venues import binance

VENUES = ("binance",)

DEFAULT_TIMEFRAMES = ["1m", "5m", "15m", "1h"]


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything a run needs. Field names are the config file's keys."""

    venue: str = "binance"
    symbols: list[str] = msgspec.field(default_factory=lambda: ["BTCUSDT", "ETHUSDT"])
    timeframes: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_TIMEFRAMES))
    history: str = "1d"
    db: str = "deltafeed.duckdb"
    rest_url: str = binance.DEFAULT_REST_URL
    ws_url: str = binance.DEFAULT_WS_URL
    hot_capacity: int = 1000
    weight_limit: int = binance.WEIGHT_LIMIT_1M
    # Merge the venue's own kline streams (final candles sooner; the forming candle complete after
    # start-up). Off, candles come from trades alone and REST repairs.
    venue_klines: bool = True
    retention: dict[str, str] = msgspec.field(default_factory=dict)
    # Keeping the stream alive and complete (durations as in "10s", "5m", "23h").
    stale_after: str = "10s"  # drop a connection that delivered nothing for this long
    rotate_after: str = "23h"  # replace a connection before the venue's 24 h cut-off
    connect_budget: int = 300  # connection attempts per 5 minutes (Binance's per-IP rule)
    unhealthy_after: str = "60s"  # an open market silent this long makes an instrument unhealthy
    audit_every: str = "10m"  # how often the store is checked for holes
    audit_window: str = "1d"  # how far back each audit looks
    status_file: str | None = None  # if set, the status as JSON, rewritten every second
    api: str = "127.0.0.1:8080"  # HOST:PORT of the HTTP/WebSocket API, or "off"

    def seconds(self, name: str) -> float:
        """A duration setting in seconds."""
        return parse_duration_ms(str(getattr(self, name))) / 1000

    def instruments(self) -> list[Instrument]:
        return [Instrument.parse(s, default_venue=self.venue) for s in self.symbols]

    @property
    def history_ms(self) -> int:
        return parse_duration_ms(self.history)

    def validate(self) -> Settings:
        """Check every value, raising :class:`BadInput` with the fix; returns self."""
        if self.venue not in VENUES:
            raise BadInput(f"unknown venue {self.venue!r}; this version supports: {', '.join(VENUES)}")
        if not self.symbols:
            raise BadInput("no symbols to collect; pass --symbols BTCUSDT,ETHUSDT or set symbols in the config")
        for inst in self.instruments():
            if inst.venue != self.venue:
                raise BadInput(f"instrument {inst} is not on venue {self.venue!r}; one venue per run for now")
        self.timeframes = parse_timeframes(self.timeframes)
        self.history_ms  # noqa: B018 - parses, raising BadInput
        for url, flag in ((self.rest_url, "--rest-url"), (self.ws_url, "--ws-url")):
            if "://" not in url:
                raise BadInput(f"{flag} {url!r} is not a URL; write it like http://127.0.0.1:9001")
        if not self.rest_url.startswith(("http://", "https://")):
            raise BadInput(f"--rest-url {self.rest_url!r} must start with http:// or https://")
        if not self.ws_url.startswith(("ws://", "wss://")):
            raise BadInput(f"--ws-url {self.ws_url!r} must start with ws:// or wss://")
        if self.hot_capacity < 1:
            raise BadInput("hot_capacity must be at least 1")
        for name in ("stale_after", "rotate_after", "unhealthy_after", "audit_every", "audit_window"):
            if self.seconds(name) <= 0:
                raise BadInput(f"{name} must be longer than 0, e.g. {name} = \"10s\"")
        if self.connect_budget < 1:
            raise BadInput("connect_budget must be at least 1 connection attempt per 5 minutes")
        for tf, text in self.retention.items():
            parse_timeframes([tf])
            if text != "forever":
                parse_duration_ms(text)
        return self


def load(path: str | None, overrides: dict[str, object]) -> Settings:
    """Defaults, then the TOML file at ``path``, then every override that is not None."""
    data: dict[str, object] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise BadInput(f"config file {path} does not exist; check the path given to --config") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"config file {path} is not valid TOML ({exc}); fix that line") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        where = f"config file {path}" if path else "settings"
        raise BadInput(f"{where}: {exc}; see the README's configuration section") from None
    return settings.validate()
