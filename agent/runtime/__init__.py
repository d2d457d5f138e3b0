"""The device at run time: the gate (scan -> decision -> journal, the hot path), lanes, the
daemon and its jobs, systemd notify, reader/relay pairings and the NFC pairing station.

May import every lower package (core, store, platform, ops, venue) and `drivers`; nothing imports it
but `agent.commands`, the demo and the CLI.
"""
