"""Ctrl-C during `gate-agent sync` (tests/faults/test_sync_interrupt.py) once printed asyncio's
"Fatal error: protocol.data_received() call failed" traceback (an InvalidStateError inside the
HTTP stack, after the cancel) although the command stopped cleanly with 130. The CLI leaves that
one record out, and only that one."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.cli import _not_cancelled_noise


def _record(msg: str, exc: BaseException | None) -> logging.LogRecord:
    info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, info)


def test_only_the_cancelled_protocol_noise_is_left_out() -> None:
    noise = "Fatal error: protocol.data_received() call failed.\nprotocol: <...>"
    assert not _not_cancelled_noise(_record(noise, asyncio.InvalidStateError("invalid state")))
    assert _not_cancelled_noise(_record(noise, ValueError("a real bug")))
    assert _not_cancelled_noise(_record("Task exception was never retrieved",
                                        asyncio.InvalidStateError("invalid state")))
    assert _not_cancelled_noise(_record("Unclosed client session", None))


def test_the_cli_installs_it_on_asyncios_logger(capsys: pytest.CaptureFixture[str]) -> None:
    from agent import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert _not_cancelled_noise in logging.getLogger("asyncio").filters
