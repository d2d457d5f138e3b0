"""The config file is strict: every mistake is an error naming the file and `section.key`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import LANE_OPTIONS, SECTIONS, load_config, parse_config
from agent.errors import ConfigError
from tests.conftest import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "config.example.toml"


def test_example_config_loads_and_documents_every_key() -> None:
    config = load_config(EXAMPLE)
    assert config.api["requests_per_minute"] == 60
    assert config.lanes[0].name == "lane1"
    text = EXAMPLE.read_text()
    for section, options in SECTIONS.items():
        assert f"[{section}]" in text
        for key in options:
            assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{section}.{key} undocumented"
    for key in LANE_OPTIONS:
        assert f"\n{key} = " in text or f"\n# {key} = " in text, f"lanes.{key} undocumented"


def test_example_defaults_match_the_declared_defaults() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    for section, options in SECTIONS.items():
        for key, value in data[section].items():
            assert options[key].default == value, f"{section}.{key}"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, key, words", [
    ("[api]\ncompany = 3\n", "api.company", "unknown key"),
    ("[api]\nrequests_per_minute = 'fast'\n", "api.requests_per_minute", "whole number"),
    ("[api]\nbudget_share = 2.0\n", "api.budget_share", "between"),
    ("[events]\nids = 'all'\n", "events.ids", "activated"),
    ("[[lanes]]\nname = 'a'\ndirection = 'sideways'\n", "lanes[0].direction", "one of"),
    ("[[lanes]]\ndirection = 'in'\n", "lanes[0].name", "required"),
    ("[[lanes]]\nname = 'a'\nmax_entries = true\n", "lanes[0].max_entries", "whole number"),
    ("[[lanes]]\nname = 'a'\n[[lanes]]\nname = 'a'\n", "lanes.name", "twice"),
    ("[status]\nlisten = '8080'\n", "status.listen", "host:port"),
    ("[stores]\ndir = '/x'\n", "stores", "unknown section"),
    ("lanes = 3\n", "lanes", "array of tables"),
    ("[device]\npeople_day_starts = '24:00'\n", "device.people_day_starts", "HH:MM"),
    ("[device]\npeople_day_starts = '6'\n", "device.people_day_starts", "HH:MM"),
    ("[sync]\nfull_resync_at = '25:99'\n", "sync.full_resync_at", "HH:MM"),
    ("[sync]\nfull_resync_at = 'nightly'\n", "sync.full_resync_at", "HH:MM"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message


def test_missing_file_and_bad_toml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[api\n"))
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe[api]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_lane_lookup_names_the_known_lanes(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "[[lanes]]\nname = 'north'\n"))
    assert config.lane(None).name == "north"
    with pytest.raises(ConfigError, match="lanes: north"):
        config.lane("south")


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from([*SECTIONS, "lanes", "bogus"]),
    st.dictionaries(st.sampled_from([*SECTIONS["api"], *LANE_OPTIONS, "zzz"]), toml_values,
                    max_size=4) | st.lists(st.dictionaries(
                        st.sampled_from([*LANE_OPTIONS, "zzz"]), toml_values, max_size=4),
                        max_size=2) | toml_values,
    max_size=4))
def test_any_document_loads_or_fails_with_a_named_key(doc: dict) -> None:
    """Fuzz: a config either validates or raises ConfigError naming a key; nothing else."""
    try:
        parse_config(doc, "fuzz.toml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml: ")
        assert exc.key


def test_venue_section_is_optional_and_documented() -> None:
    from agent.config import VENUE_OPTIONS

    assert load_config(EXAMPLE).venue is None
    text = EXAMPLE.read_text()
    assert "\n# [venue]\n" in text
    for key in VENUE_OPTIONS:
        assert f"\n# {key} = " in text, f"venue.{key} undocumented"


def test_venue_section_is_strict(tmp_path: Path) -> None:
    good = parse_config({"venue": {"name": "hall-1", "servers": ["nats://127.0.0.1:4222"]}})
    assert good.venue is not None
    assert good.venue["claim_timeout_ms"] == 250 and good.venue["offline_policy"] == "local"
    assert good.venue["leader"] is True and good.venue["lease_ttl_s"] == 10.0
    assert good.venue["platform_reserve"] == 6 and good.venue["fallback_after_s"] == 120.0
    assert good.venue["leader_stepdown_after_s"] == 120.0
    assert good.venue["platform_probe_s"] == 30.0
    for table, key, words in [
        ({"name": "hall"}, "venue.servers", "required"),
        ({"servers": ["nats://a:1"]}, "venue.name", "required"),
        ({"name": "a.b", "servers": ["nats://a:1"]}, "venue.name", "letters"),
        ({"name": "a", "servers": []}, "venue.servers", "non-empty"),
        ({"name": "a", "servers": ["http://a:1"]}, "venue.servers", "nats://"),
        ({"name": "a", "servers": ["nats://a:1"], "offline_policy": "guess"},
         "venue.offline_policy", "one of"),
        ({"name": "a", "servers": ["nats://a:1"], "claim_timeout_ms": 0},
         "venue.claim_timeout_ms", "between"),
        ({"name": "a", "servers": ["nats://a:1"], "device": "g 1"}, "venue.device", "letters"),
        ({"name": "a", "servers": ["nats://a:1"], "leadr": True}, "venue.leadr", "unknown"),
        ({"name": "a", "servers": ["nats://a:1"], "lease_ttl_s": 0}, "venue.lease_ttl_s",
         "between"),
        ({"name": "a", "servers": ["nats://a:1"], "platform_reserve": -1},
         "venue.platform_reserve", "between"),
        ({"name": "a", "servers": ["nats://a:1"], "fallback_after_s": 1},
         "venue.fallback_after_s", "between"),
        ({"name": "a", "servers": ["nats://a:1"], "leader": "yes"}, "venue.leader", ""),
        ({"name": "a", "servers": ["nats://a:1"], "leader_stepdown_after_s": 0},
         "venue.leader_stepdown_after_s", "between"),
        ({"name": "a", "servers": ["nats://a:1"], "platform_probe_s": "often"},
         "venue.platform_probe_s", ""),
        ({"name": "a", "servers": ["nats://a:1"], "platform_probe_s": 0.5},
         "venue.platform_probe_s", "between"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"venue": table}, "c.toml")
        assert f"c.toml: {key}:" in str(info.value) and words in str(info.value), table


@pytest.mark.parametrize("pattern, words", [
    ("blue:100", "NAME:MS"), ("red", "NAME:MS"), ("red:5", "10..60000"), ("red:1x", "NAME:MS"),
])
def test_indicator_patterns_are_checked(tmp_path: Path, pattern: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, f"[[lanes]]\nname = 'a'\nindicate_refuse = '{pattern}'\n"))
    assert err.value.key == "lanes[0].indicate_refuse" and words in str(err.value)


def test_turnstile_signal_keys_load() -> None:
    from agent.config import parse_config, parse_pattern, passage_input_for

    config = parse_config({"device": {"emergency_input": "sim:fire"}, "lanes": [{
        "name": "a", "direction": "auto", "relay": "sim:r", "relay_out": "sim:o",
        "passage_in": "sim:pi", "passage_timeout_ms": 3000, "indicate_admit": ""}]})
    lane = config.lanes[0]
    assert config.device["emergency_input"] == "sim:fire"
    assert (passage_input_for(lane, "in"), passage_input_for(lane, "out")) == ("sim:pi", "")
    assert parse_pattern(lane.indicate_admit) == ()
    assert parse_pattern(lane.indicate_refuse) == (("red", 1500), ("buzzer", 300))


@pytest.mark.parametrize("value", ["123456789012", "0.123456789012", "[\"s3cr3t-in-a-list\"]"])
def test_a_secret_of_the_wrong_type_is_never_echoed(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, f"[status]\ntoken = {value}\n"))
    message = str(info.value)
    assert "status.token" in message and "a string" in message
    for part in ("123456789012", "s3cr3t"):
        assert part not in message
