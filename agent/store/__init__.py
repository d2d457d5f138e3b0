"""All SQL of gate-agent lives in this package: the ticket cache and the scan journal.

They are two SQLite files on purpose: the cache can be thrown away and rebuilt from the platform
at any time, the journal (the outbox of scans) never is.
"""
