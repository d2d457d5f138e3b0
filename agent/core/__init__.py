"""The pure decision domain: what the platform's data means and whether a scan may pass.

Holds model (tolerant parsers), codes (codes, times, zones), scanstate and decide. May import
only `agent.config` and `agent.errors`: no SQL, no HTTP, no threads, no clock (time is passed in).
"""
