"""Every name of a collected series resolves to the name it is stored under, in one place
(:mod:`deltafeed.names`), for the settings, the HTTP API, the WebSocket hub and the CLI alike."""

from __future__ import annotations

import pytest

from deltafeed.config import Settings
from deltafeed.model import BadInput
from deltafeed.names import UnknownName, native, resolve

KNOWN = [
    "binance:BTCUSDT",
    "coinbase:BTC-USD",
    "bybit:LINEAR:BTCUSDT",
    "hyperliquid:ETH",
    "kraken:BTC/USD",
    "oanda:EUR_USD",
    "oanda:EUR_USD@bid",
    "x:BTCUSD",
]
ALIASES = {"eth-perp": "hyperliquid:ETH"}


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("binance:BTCUSDT", "binance:BTCUSDT"),
        ("binance:btcusdt", "binance:BTCUSDT"),
        ("binance:BTC/USDT", "binance:BTCUSDT"),  # ccxt's unified symbol on a venue
        ("BTC/USDT", "binance:BTCUSDT"),  # ... on the default venue
        ("BTCUSDT", "binance:BTCUSDT"),  # a bare symbol on the default venue
        ("coinbase:BTC/USD", "coinbase:BTC-USD"),
        ("kraken:btc/usd", "kraken:BTC/USD"),
        ("bybit:BTC/USDT:USDT", "bybit:LINEAR:BTCUSDT"),  # a linear perpetual settles in USDT
        ("hyperliquid:ETH/USDC:USDC", "hyperliquid:ETH"),
        ("ETH/USDC:USDC", "hyperliquid:ETH"),  # collected on one venue only
        ("ETH-PERP", "hyperliquid:ETH"),  # an alias, any case
        ("eth-perp", "hyperliquid:ETH"),
        ("EUR/USD@BID", "oanda:EUR_USD@bid"),
        ("oanda:eur_usd@bid", "oanda:EUR_USD@bid"),
        ("x:BTCUSD", "x:BTCUSD"),  # a logical (failover) instrument
    ],
)
def test_names_resolve_to_the_stored_series(name: str, stored: str) -> None:
    assert resolve(name, KNOWN, aliases=ALIASES, default_venue="binance") == stored


def test_a_name_on_several_venues_must_say_which() -> None:
    with pytest.raises(UnknownName, match="several venues; name one: coinbase:BTC-USD, kraken:BTC/USD"):
        resolve("BTC/USD", KNOWN, default_venue="binance")


@pytest.mark.parametrize("name", ["binance:ETHUSDT", "ETH/USDT", "oanda:EUR_USD@ask", "kraken:ETH/USD"])
def test_a_name_not_collected_is_a_lookup_error_listing_what_is(name: str) -> None:
    with pytest.raises(UnknownName, match="is not collected here; choose one of binance:BTCUSDT"):
        resolve(name, KNOWN, default_venue="binance")


def test_a_malformed_name_is_bad_input_not_a_lookup_error() -> None:
    with pytest.raises(BadInput, match="VENUE:SYMBOL") as caught:
        resolve("binance:BTC USDT", KNOWN)
    assert not isinstance(caught.value, LookupError)


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("binance:BTC/USDT", "binance:BTCUSDT"),
        ("coinbase:eth/usd", "coinbase:ETH-USD"),
        ("bybit:BTC/USDT:USDT", "bybit:LINEAR:BTCUSDT"),
        ("hyperliquid:BTC/USDC:USDC", "hyperliquid:BTC"),
        ("kraken:BTC/USD", "kraken:BTC/USD"),
        ("oanda:EUR/USD@BID", "oanda:EUR_USD@bid"),
        ("SOL/USDT", "binance:SOLUSDT"),
    ],
)
def test_unified_symbols_in_the_settings_become_the_venues_own(name: str, stored: str) -> None:
    assert native(name, default_venue="binance") == stored


def test_settings_merge_one_instrument_named_twice_and_resolve_aliases() -> None:
    s = Settings(
        symbols=["BTCUSDT", "btcusdt", "binance:BTC/USDT", "ETH-PERP", "BTC/USDT"],
        aliases={"ETH-PERP": "hyperliquid:ETH"},
        db=":memory:",
    ).validate()
    assert s.symbols == ["binance:BTCUSDT", "hyperliquid:ETH"]


@pytest.mark.parametrize(
    ("symbols", "aliases", "needle"),
    [
        ([""], {}, "an empty symbol among the symbols"),
        (["BTCUSDT", " "], {}, "an empty symbol among the symbols"),
        (["BTCUSDT"], {"ETH-PERP": "hyperliquid:ETH"}, "alias ETH-PERP names hyperliquid:ETH, which this run"),
        (["BTCUSDT"], {"binance:X": "binance:BTCUSDT"}, "must be a plain name without a venue"),
    ],
)
def test_bad_symbols_and_aliases_are_one_line(symbols: list[str], aliases: dict[str, str], needle: str) -> None:
    with pytest.raises(BadInput, match=needle):
        Settings(symbols=symbols, aliases=aliases, db=":memory:").validate()


@pytest.mark.parametrize(
    ("name", "default", "stored"),
    [
        ("BINANCE:BTCUSDT", "finnhub", "finnhub:BINANCE:BTCUSDT"),  # Finnhub's exchange, not our venue
        ("OANDA:EUR_USD", "finnhub", "finnhub:OANDA:EUR_USD"),
        ("binance:BTCUSDT", "finnhub", "binance:BTCUSDT"),  # a venue's name is lower case
        ("linear:BTCUSDT", "bybit", "bybit:LINEAR:BTCUSDT"),  # no venue is called linear
        ("BINANCE:BTCUSDT", "binance", "binance:BTCUSDT"),  # Binance's symbols have no prefix
    ],
)
def test_a_default_venue_with_prefixed_symbols_keeps_the_prefix(name: str, default: str, stored: str) -> None:
    assert native(name, default_venue=default) == stored
    assert resolve(name, [stored], default_venue=default) == stored


def test_ccxt_instruments_answer_to_their_unified_symbol() -> None:
    known = ["ccxt:OKX:BTC/USDT:USDT", "ccxt:KRAKEN:ETH/USD"]
    assert resolve("ccxt:okx:BTC/USDT:USDT", known) == "ccxt:OKX:BTC/USDT:USDT"
    assert resolve("BTC/USDT:USDT", known) == "ccxt:OKX:BTC/USDT:USDT"  # the only venue collecting it
    assert resolve("ETH/USD", known) == "ccxt:KRAKEN:ETH/USD"
    assert native("ccxt:okx:BTC/USDT") == "ccxt:OKX:BTC/USDT"
