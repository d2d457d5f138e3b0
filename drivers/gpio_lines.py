"""One GPIO line through libgpiod v2 (PyPI `gpiod` 2.x), shared by relays and contact inputs:
URL parsing, the library check, the request with errors a technician can act on, release.

Debian's python3-libgpiod is the incompatible v1 API; it is refused with the pip command."""

from __future__ import annotations

import logging
from typing import Any

from agent.errors import DriverUnavailable

log = logging.getLogger(__name__)


def split_chip_line(url: str, path: str) -> tuple[str, int]:
    chip, sep, line = path.rpartition(":")
    if not sep or not chip or not line.isdigit():
        raise DriverUnavailable(url, "expected gpio:CHIP:LINE", "e.g. gpio:/dev/gpiochip0:17")
    return chip, int(line)


def require_gpiod(url: str) -> None:
    """DriverUnavailable unless `gpiod` 2.x is importable."""
    try:
        import gpiod
    except ImportError as exc:
        raise DriverUnavailable(
            url, "python package gpiod is not installed", "pip install gate-agent[gpio]"
        ) from exc
    if not hasattr(gpiod, "request_lines"):
        raise DriverUnavailable(
            url, "the installed gpiod is libgpiod v1 (Debian's python3-libgpiod)",
            "pip install 'gpiod>=2.1' (gate-agent[gpio]) in the agent's virtualenv",
        )


def request_line(url: str, chip: str, line: int, settings: Any) -> Any:
    """`gpiod.request_lines` for one line; its failures as DriverUnavailable with a hint."""
    import gpiod

    try:
        return gpiod.request_lines(chip, consumer="gate-agent", config={line: settings})
    except FileNotFoundError as exc:
        raise DriverUnavailable(
            url, f"no GPIO chip {chip}", "see `gate-agent devices list` for chips"
        ) from exc
    except PermissionError as exc:
        raise DriverUnavailable(
            url, f"permission denied on {chip}",
            "add the service user to the gpio group (or a udev rule for gpiochip*)",
        ) from exc
    except OSError as exc:
        raise DriverUnavailable(
            url, f"cannot request line {line} of {chip}: {exc}",
            "is the line number right, and not used by another program (gpioinfo)?",
        ) from exc


def release_quietly(request: Any, url: str) -> None:
    if request is not None:
        try:
            request.release()
        except OSError:
            log.debug("%s: release failed", url, exc_info=True)
