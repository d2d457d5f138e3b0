"""gate-agent: an offline-first turnstile agent for Nu Web Group's ticketing platform."""

__version__ = "0.1.0"
