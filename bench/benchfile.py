"""Writing a benchmark's figures to `bench/results/*.json` the same way for every bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def save_results(results: dict[str, Any], output: str | Path) -> Path:
    """Record where the figures went (relative to the project when inside it), write them."""
    out = Path(output)
    resolved = out.resolve()
    results["output"] = str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) \
        else str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return out
