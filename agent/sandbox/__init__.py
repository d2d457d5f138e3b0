"""A local emulator of Nu Web Group's ticketing API (`gate-agent sandbox`).

seed.py (deterministic data, lazy items) -> store.py (mutations, paging order) -> rules.py
(uploads, pairing, zone scans) -> state.py (tokens, rate windows, async, faults) -> app.py
(Starlette, `/v1`) + control.py (`/_sandbox`) -> harness.py (thread/subprocess start-up).
See docs/platform.md for behaviour and the choices made where the platform's docs are silent.
"""
