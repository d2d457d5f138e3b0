"""All SQL of gate-agent: the ticket cache and the scan journal, two SQLite files on purpose.

The cache can be rebuilt from the platform at any time, the journal (the outbox of scans) never
is. May import `agent.core`; never `agent.platform`, `agent.runtime`, `agent.ops` or `agent.venue`.
"""
