"""The venue layer on NATS JetStream (round two): scan sharing, per-ticket claims, the elected
leader and heartbeats. Empty until the venue issues land.

May import `agent.core`, `agent.store` and `agent.platform`; never `agent.runtime` or `agent.ops`.
"""
