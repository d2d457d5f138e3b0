"""What ops see: status assembly (health and reasons), the status HTTP server, Prometheus
metrics and the JSON log format.

May import `agent.core`; never `agent.store`, `agent.platform` or `agent.runtime` (the daemon
hands it plain snapshots).
"""
