"""Every exchange ccxt.pro can stream: ``ccxt:<exchange>:<unified symbol>`` instruments, trades from
``watch_trades_for_symbols`` (or ``watch_trades``), history from ``fetch_ohlcv``, reconciled.

ccxt is an optional extra (``pip install 'deltafeed[ccxt]'``), imported only when a run names a
``ccxt:`` instrument, ``deltafeed venues ccxt`` lists the exchanges, or a replica is pointed at.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import msgspec

from deltafeed.model import BadInput
from deltafeed.venues.base import Venue, VenueSettings
from deltafeed.venues.ccxt.bridge import TRADES_LIMIT

if TYPE_CHECKING:
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink

INSTALL_HINT = "pip install 'deltafeed[ccxt]'"

#: The deltafeed venues whose replicas ccxt consumes with only its addresses (and a few options)
#: changed, with what each exchange needs besides the addresses.
REPLICA_EXCHANGES: dict[str, dict[str, Any]] = {
    # ccxt appends a connection number to the address (``/ws/0``), which the replica takes only on
    # its combined-stream path: the address is given whole.
    "binance": {"options": {"fetchMarkets": {"types": ["spot"]}}, "ws_path": "/stream"},
    "bybit": {"options": {"fetchMarkets": {"types": ["spot", "linear"]}}},
    # ccxt charges a candles call 3 x rateLimit: 40 ms is 8.3 calls a second, under the 10 public
    # requests/s the replica (and the venue) enforce (150 ms was 2.2 a second, which left repairs behind).
    "coinbase": {"config": {"rateLimit": 40}},
    # (Its pace is the venue's own weight of each request: see bridge.REQUEST_WEIGHTS.)
    "hyperliquid": {},
    "kraken": {},
}


class CcxtSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.ccxt]``: per exchange id, its addresses, ccxt ``options`` and other constructor keys.

    ``urls = { binance = { rest = "http://127.0.0.1:9001", ws = "ws://127.0.0.1:9001" } }`` points
    every REST (``http(s)://``) and WebSocket (``ws(s)://``) address of ccxt's ``urls['api']`` at
    another origin, keeping ccxt's paths; a value with a path replaces those addresses whole. Any
    other keys make it a raw ccxt ``urls`` override, deep-merged (``{ api = { public = "..." } }``).
    """

    urls: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    options: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)  # ccxt ``options``, deep-merged
    config: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)  # e.g. { kraken = { rateLimit = 2000 } }
    trades_limit: int = TRADES_LIMIT  # ccxt's trade cache per symbol (its default 1000 drops bursts)
    # single: one watch_trades loop per symbol (ccxt's advice against its multi-symbol caches; measured
    # here, the batch form lost a symbol for good after a reconnect); batch: one
    # watch_trades_for_symbols loop per exchange where it has the form.
    watch: str = "single"
    # With watch = "batch", the most symbols one watch_trades_for_symbols loop takes (ccxt's Binance
    # refuses more than 200); more symbols are split over as many loops.
    batch_symbols: int = 200
    # Seconds one symbol may go without trades while others of its exchange trade before its
    # subscription is presumed lost and the exchange's connections are renewed (a hole each).
    symbol_silence: float = 120.0
    sequential_ids: list[str] = msgspec.field(default_factory=list)  # more exchanges with consecutive trade ids
    # Per exchange, the newest OHLCV rows it serves (Kraken 720 and Hyperliquid 5000 built in): history
    # older than that is reported once and its candles are never marked final.
    history_rows: dict[str, int] = msgspec.field(default_factory=dict)
    # More exchanges (Kraken built in) whose fetch_trades pages by since through their whole history:
    # candles older than their history rows are built from trades.
    trade_history: list[str] = msgspec.field(default_factory=list)
    reconcile_every: float = 20.0  # seconds between reconciliations of provisional candles with fetch_ohlcv


class Ccxt(Venue):
    name = "ccxt"
    prefixed_symbols = True  # EXCHANGE:SYMBOL

    def unified_symbol(self, symbol: str) -> str | None:
        """``OKX:BTC/USDT:USDT`` is ccxt's ``BTC/USDT:USDT`` on OKX: the symbol after the exchange."""
        _, found, unified = symbol.partition(":")
        return unified if found and "/" in unified else None

    def native_symbol(self, unified: str) -> str | None:
        return None  # a unified symbol names no exchange

    description = "any exchange ccxt.pro streams: trades over its WebSocket, candles from fetch_ohlcv, reconciled"
    settings_type = CcxtSettings
    # Each exchange offers its own timeframes; one it lacks is rolled up from a shorter one it has,
    # and check() refuses a run asking for one that cannot be (naming those it can).
    timeframes = None
    # Many exchanges have no OHLCV row for an interval without trades; for those that have one,
    # the answer covers the range anyway, so this is the setting that is right for both.
    omits_empty = True
    # ccxt's trade ids are not generally a consecutive sequence (and the stream may lose trades
    # silently): every candle the stream builds stays provisional until fetch_ohlcv confirms it.
    sequenced = False
    reconcile_every_s = 20.0
    history_trades = False  # OHLCV rows carry no trade count

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.ccxt.feed import CcxtFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, CcxtSettings)  # its settings_type
        return CcxtFeed(vs, stale_after_s=settings.seconds("stale_after"), on_trade=on_trade)

    def catalog(self) -> list[str]:
        """The exchanges of the installed ccxt that can stream trades and serve OHLCV, with timeframes."""
        from deltafeed.venues.ccxt.feed import streaming_exchanges

        rows = streaming_exchanges()
        return [f"{ex:<20} {' '.join(tfs)}" for ex, tfs in rows] + [
            f"{len(rows)} exchanges with watchTrades and fetchOHLCV; instruments are ccxt:<exchange>:<unified symbol>"
        ]

    # The replica: the exchange's own deltafeed replica, with the settings that point ccxt at it.
    replica_help = "a deltafeed replica (--exchange binance, coinbase, bybit, hyperliquid, kraken) for ccxt to consume"
    replica_example = "BTCUSDT"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args

        parser.add_argument(
            "--exchange", default="binance", choices=sorted(REPLICA_EXCHANGES), help="whose replica to run"
        )
        add_common_args(
            parser,
            symbols="",
            symbols_help="the replica's symbols, as the venue spells them (default: the venue replica's)",
            rate_help="trades per second of market time, per symbol",
            start_help="market time at start-up (default now)",
            history="1h",
            tape_help="write every trade to this CSV file",
            fault_kinds="those of the exchange's replica (see deltafeed replica EXCHANGE --help)",
        )
        # The exchange's replica decides the defaults of what the user leaves out.
        parser.set_defaults(symbols=None, rate=None, history=None)

    def make_replica(self, args: argparse.Namespace) -> ReplicaBase:
        from deltafeed.venues import registry

        target = registry.get(args.exchange)
        parser = argparse.ArgumentParser()
        target.add_replica_args(parser)
        ns = parser.parse_args([])
        for key, value in vars(args).items():
            if key in vars(ns) and value is not None:
                setattr(ns, key, value)
        return target.make_replica(ns)

    def run_lines(self, replica: ReplicaBase, symbols: list[str] | None = None) -> list[str]:
        """How to collect from the started ``replica`` through ccxt: the ``[venues.ccxt]`` table that
        points ccxt at it and the ``deltafeed run`` command (ccxt's unified symbols, not the replica's)."""
        exchange = replica.venue
        s = self.replica_settings(replica)
        lines = ["collect from it through ccxt with:", "  cat > replica.toml <<'EOF'", "  [venues.ccxt]"]
        lines += [f"  {key} = {toml_inline(s[key])}" for key in ("urls", "options", "config") if s[key]]
        lines += ["  EOF", f"  deltafeed run --symbols ccxt:{exchange}:<unified symbol> --config replica.toml"]
        return lines

    def replica_settings(self, replica: ReplicaBase) -> dict[str, Any]:
        """The ``[venues.ccxt]`` settings that point ccxt at the started deltafeed ``replica`` of one
        of :data:`REPLICA_EXCHANGES` (its addresses, and the options its exchange needs there)."""
        exchange = str(getattr(replica, "venue", ""))
        extra = REPLICA_EXCHANGES.get(exchange)
        if extra is None:
            raise BadInput(f"ccxt reads replicas of {', '.join(sorted(REPLICA_EXCHANGES))}, not {exchange!r}")
        ws = getattr(replica, "ws_url", None) or replica.url.replace("http://", "ws://", 1)
        ws += extra.get("ws_path", "")
        out: dict[str, Any] = {"urls": {exchange: {"rest": replica.url, "ws": ws}}, "options": {}, "config": {}}
        for key in ("options", "config"):
            if extra.get(key):
                out[key][exchange] = extra[key]
        return out

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.ccxt.samples import fuzz_targets

        return fuzz_targets()


def toml_inline(value: Any) -> str:
    """``value`` (tables, lists, strings, numbers) as a TOML inline value."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_inline(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


VENUE = Ccxt()
__all__ = ["INSTALL_HINT", "VENUE", "Ccxt", "CcxtSettings"]
