"""The ``DELTAFEED_*`` environment layer of the settings: precedence (flags > environment > file >
defaults), conversion by each field's type, venue tables, and one-line errors naming the variable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from deltafeed import config
from deltafeed.config import Settings, env_settings, env_variables, load
from deltafeed.model import BadInput

FILE = """
symbols = ["BTCUSDT"]
history = "2h"
hot_capacity = 500
[venues.binance]
rest_url = "http://127.0.0.1:9001"
ws_url = "ws://127.0.0.1:9001"
"""


@pytest.fixture
def toml(tmp_path: Path) -> str:
    path = tmp_path / "deltafeed.toml"
    path.write_text(FILE)
    return str(path)


def test_flags_beat_environment_beat_file_beat_defaults(toml: str, tmp_path: Path) -> None:
    db = str(tmp_path / "x.duckdb")
    env = {"DELTAFEED_SYMBOLS": "ETHUSDT, SOLUSDT", "DELTAFEED_HISTORY": "3h", "DELTAFEED_DB": db}
    s = load(toml, {"history": "4h"}, environ=env)
    assert s.symbols == ["binance:ETHUSDT", "binance:SOLUSDT"]  # the environment over the file
    assert s.history == "4h"  # a flag over both
    assert s.hot_capacity == 500  # the file, where nothing overrides it
    assert s.timeframes == Settings().timeframes  # the default, where nothing sets it
    assert s.db == db
    # Without the variables, the file again.
    assert load(toml, {}, environ={}).symbols == ["binance:BTCUSDT"]


def test_values_convert_by_the_field_type(tmp_path: Path) -> None:
    env = {
        "DELTAFEED_DB": str(tmp_path / "x.duckdb"),
        "DELTAFEED_HOT_CAPACITY": " 250 ",
        "DELTAFEED_VENUE_KLINES": "off",
        "DELTAFEED_TICKS": "FALSE",
        "DELTAFEED_TIMEFRAMES": "5m,1m",
        "DELTAFEED_RETENTION": '{ "1m" = "30d", "1h" = "forever" }',
        "DELTAFEED_ALIASES": '{ "BTC" = "BTCUSDT" }',
        "DELTAFEED_API_MAX_CONNECTIONS": "64",
        "DELTAFEED_WEIGHT_LIMIT": "1200",
        "DELTAFEED_REST_URL": "",  # empty: unset
    }
    s = load(None, {}, environ=env)
    assert s.hot_capacity == 250 and s.api_max_connections == 64 and s.weight_limit == 1200
    assert s.venue_klines is False and s.ticks is False
    assert s.timeframes == ["1m", "5m"]  # parsed and sorted as a file's are
    assert s.retention == {"1m": "30d", "1h": "forever"}
    assert s.aliases == {"BTC": "BTCUSDT"}
    assert s.rest_url is None


def test_a_venue_variable_sets_one_key_of_its_table(toml: str) -> None:
    env = {"DELTAFEED_VENUES__BINANCE__REST_URL": "http://127.0.0.1:9555"}
    s = load(toml, {}, environ=env)
    vs = s.venue_settings("binance")
    assert vs.rest_url == "http://127.0.0.1:9555"  # the variable
    assert vs.ws_url == "ws://127.0.0.1:9001"  # the file's other key stays
    assert env_settings({"DELTAFEED_VENUES__OANDA__PRICES": "bid,ask"}) == {
        "venues": {"oanda": {"prices": ["bid", "ask"]}}
    }


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DELTAFEED_HOT_CAPACITY": "lots"}, "DELTAFEED_HOT_CAPACITY='lots' is not a whole number"),
        ({"DELTAFEED_TICKS": "maybe"}, "DELTAFEED_TICKS='maybe' is not true or false"),
        ({"DELTAFEED_RETENTION": "1m=30d"}, "DELTAFEED_RETENTION is not a TOML value"),
        ({"DELTAFEED_RETENTION": '{ "1m" = 30 }'}, "DELTAFEED_RETENTION="),
        ({"DELTAFEED_VENUES__NOWHERE__REST_URL": "http://x"}, "DELTAFEED_VENUES__NOWHERE__REST_URL: unknown venue"),
        ({"DELTAFEED_VENUES__BINANCE__RESTURL": "http://x"}, "binance has no setting resturl; its settings are"),
        ({"DELTAFEED_VENUES__BINANCE": "http://x"}, "DELTAFEED_VENUES__<VENUE>__<SETTING>"),
        ({"DELTAFEED_HISTORY": "5x"}, "cannot read duration '5x'"),  # converted, then validated as a file's
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], says: str) -> None:
    with pytest.raises(BadInput) as err:
        load(None, {}, environ=env)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_secret_is_never_repeated_in_an_error() -> None:
    with pytest.raises(BadInput) as err:
        config._env_value("DELTAFEED_VENUES__X__API_KEY", "hunter2-secret", int)
    assert "hunter2" not in str(err.value) and "DELTAFEED_VENUES__X__API_KEY" in str(err.value)


def test_a_near_miss_is_warned_about_and_other_tools_variables_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deltafeed.config"):
        out = env_settings(
            {"DELTAFEED_SYMBOL": "BTCUSDT", "DELTAFEED_TEST_PG": "postgresql://x", "DELTAFEED_CONFIG": "a"}
        )
    assert out == {}
    assert [r.getMessage() for r in caplog.records] == [
        "DELTAFEED_SYMBOL is not a setting and is ignored; did you mean DELTAFEED_SYMBOLS?"
    ]


def test_every_setting_has_a_variable() -> None:
    names = env_variables()
    for field in Settings.__struct_fields__:
        if field != "venues":
            assert f"DELTAFEED_{field.upper()}" in names, field
    assert names["DELTAFEED_SYMBOLS"] == "comma list" and names["DELTAFEED_HOT_CAPACITY"] == "whole number"
    assert "DELTAFEED_VENUES__<VENUE>__<SETTING>" in names
