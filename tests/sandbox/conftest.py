"""The sandbox tests use the platform tests' fixture: a fresh sandbox on a loopback port."""

from tests.platform.conftest import sandbox  # noqa: F401  (a fixture, re-exported)
