"""Config mistakes tests/core/test_config.py does not cover one by one: every option of every
section and every lane option wrong-typed, sections that are not tables, lanes that are not
tables, lists with wrong members. Each must be a ConfigError naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import LANE_OPTIONS, SECTIONS, Option, load_config, parse_config
from agent.errors import ConfigError


def wrong_values(opt: Option) -> list[Any]:
    """Values of a type the option does not take (TOML has no null, so none of those)."""
    kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
    candidates: list[Any] = ["text", 7, 2.5, True, [1], {"a": 1}]
    out = []
    for value in candidates:
        if isinstance(value, bool):
            ok = bool in kinds
        else:
            ok = isinstance(value, kinds)
        if not ok:
            out.append(value)
    return out


CASES = [(f"{section}.{key}", section, key, value)
         for section, options in SECTIONS.items() for key, opt in options.items()
         for value in wrong_values(opt)]
LANE_CASES = [(f"lanes[0].{key}", key, value)
              for key, opt in LANE_OPTIONS.items() for value in wrong_values(opt)]


@pytest.mark.parametrize("key, section, name, value", CASES, ids=[f"{c[0]}={c[3]!r}" for c in CASES])
def test_every_section_option_wrong_typed_names_its_key(key: str, section: str, name: str,
                                                        value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({section: {name: value}}, "site.toml")
    assert info.value.key == key
    assert str(info.value).startswith(f"site.toml: {key}: must be ")


@pytest.mark.parametrize("key, name, value", LANE_CASES, ids=[f"{c[0]}={c[2]!r}" for c in LANE_CASES])
def test_every_lane_option_wrong_typed_names_its_key(key: str, name: str, value: Any) -> None:
    lane = {"name": "a", name: value}
    with pytest.raises(ConfigError) as info:
        parse_config({"lanes": [{"name": "ok"}, lane][::-1]}, "site.toml")
    assert info.value.key == key
    assert str(info.value).startswith(f"site.toml: {key}: must be ")


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_section_that_is_not_a_table(section: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({section: [1, 2]}, "site.toml")
    assert info.value.key == section and "must be a table" in str(info.value)


@pytest.mark.parametrize("lanes, key, words", [
    ([3], "lanes[0]", "must be a table"),
    ([{"name": "a"}, "b"], "lanes[1]", "must be a table"),
    ([{"name": "a", "event_ids": ["501"]}], "lanes[0].event_ids", "whole numbers"),
    ([{"name": "a", "event_ids": [True]}], "lanes[0].event_ids", "whole numbers"),
    ([{"name": "a", "readers": ["serial:///dev/x", ""]}], "lanes[0].readers", "non-empty"),
    ([{"name": "a", "readers": [5]}], "lanes[0].readers", "non-empty"),
    ([{"name": "a", "ticket_types": [1.5]}], "lanes[0].ticket_types", "whole numbers"),
    ([{"name": "  "}], "lanes[0].name", "must not be empty"),
    ([{"name": "a", "zone_id": 0}], "lanes[0].zone_id", "between"),
    ([{"name": "a", "debounce_ms": -1}], "lanes[0].debounce_ms", "between"),
    ([{"name": "a", "relay_pulse_ms": 10**9}], "lanes[0].relay_pulse_ms", "between"),
])
def test_lane_shapes_and_members(lanes: list[Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"lanes": lanes}, "site.toml")
    assert info.value.key == key and words in str(info.value), str(info.value)


def test_missing_sections_take_the_declared_defaults() -> None:
    config = parse_config({}, "empty.toml")
    assert config.lanes == ()
    for section, options in SECTIONS.items():
        values = getattr(config, section)
        assert values == {k: (list(o.default) if isinstance(o.default, list) else
                              (float(o.default) if float in (o.kind if isinstance(o.kind, tuple)
                                                              else (o.kind,))
                               and isinstance(o.default, int) else o.default))
                          for k, o in options.items()}, section
    assert config.store["fail_closed"] is True and config.store["keep_personal_data"] is False


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    """Through load_config (real TOML): a wrong type deep in the second lane."""
    path = tmp_path / "gate.toml"
    path.write_text('[[lanes]]\nname = "a"\n[[lanes]]\nname = "b"\nreaders = "serial:///x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: lanes[1].readers: must be a list")
    path.write_text("[api]\ntoken_file = 600\n")
    with pytest.raises(ConfigError, match=r"api\.token_file: must be a string, got int 600"):
        load_config(path)
