"""The suite's run order (tests/scheduling.py): costliest modules first, nothing dropped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.scheduling import costliest_first, costs_from_durations, load_costs


@dataclass
class Item:
    nodeid: str


def test_listed_modules_go_first_by_cost_the_rest_keep_their_order() -> None:
    ids = ["a.py::t1", "b.py::t1", "c.py::t1", "c.py::t2", "d.py::t1", "b.py::t2", "e.py::t1"]
    items = [Item(i) for i in ids]
    costliest_first(items, {"c.py": 5.0, "e.py": 20.0, "b.py": 1.0})
    assert [i.nodeid for i in items] == ["e.py::t1", "c.py::t1", "c.py::t2", "b.py::t1",
                                         "b.py::t2", "a.py::t1", "d.py::t1"]


def test_costs_add_up_per_module_from_a_durations_report(tmp_path: Path) -> None:
    report = ["============ slowest durations ============",
              "12.50s call     tests/x/test_a.py::test_one[p]",
              "0.50s setup    tests/x/test_a.py::test_one[p]",
              "3.00s teardown tests/test_b.py::test_two",
              "1323 passed in 775.87s (0:12:55)"]
    costs = costs_from_durations(report)
    assert costs == {"tests/x/test_a.py": 13.0, "tests/test_b.py": 3.0}
    listed = tmp_path / "costs.txt"
    listed.write_text("# comment\n13.0 tests/x/test_a.py\n\n3.0 tests/test_b.py  # why\n")
    assert load_costs(listed) == costs
    assert load_costs(tmp_path / "missing.txt") == {}
