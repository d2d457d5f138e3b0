"""Everything that talks to the ticketing API: the one HTTP client, its error branch, the rate
governor, sync, upload, provisioning from export files and the token file.

May import `agent.core` and `agent.store`; never `agent.runtime`, `agent.ops` or `agent.venue`.
"""
