"""The device commands' tests use the drivers' pty fixture (a real pseudo-terminal pair)."""

from tests.drivers.conftest import _clean_sim, pty_device  # noqa: F401  (fixtures, re-exported)
