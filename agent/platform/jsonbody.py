"""Strict JSON for everything the platform (or an export of it) sends us.

Python's `json` accepts `NaN`, `Infinity` and `-Infinity`, and reads `1e400` as infinity. None of
them is JSON, and none survives the cache: the raw item is stored with orjson, which writes a
non-finite float as `null`, so a validity bound of `Infinity` would come back as "no bound" and
admit. A body holding one is refused as a whole (BadResponse / ImportFileError), never cached.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NonFiniteNumber(ValueError):
    """A number JSON cannot carry (NaN, Infinity, or one too large for a float)."""


def _constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text[:40]} is too large for a number")
    return value


def loads_strict(data: str | bytes) -> Any:
    """json.loads, refusing NaN, Infinity and overflowing numbers (ValueError)."""
    return json.loads(data, parse_constant=_constant, parse_float=_float)
