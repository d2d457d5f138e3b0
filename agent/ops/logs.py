"""Logging: plain text on a terminal, JSON lines under systemd (journald) or on request.

A filter on the root handler passes every message through `redact`, so even a library that logs
a request with its headers cannot leak the API token.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from agent.errors import redact

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra={"fields": {...}}` adds structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, default=str)


def choose_format(requested: str) -> str:
    """`auto`: JSON when stderr goes to journald (systemd sets JOURNAL_STREAM), else text."""
    if requested != "auto":
        return requested
    if os.environ.get("JOURNAL_STREAM") and not sys.stderr.isatty():
        return "json"
    return "text"


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactFilter())
    if choose_format(fmt) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "apscheduler", "uvicorn.access", "nfc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
