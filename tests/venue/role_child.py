"""Child process for the leader tests: one gate device's real `VenueRole` (election, hand-over,
catalog, and leader work when it wins) from its config file, until SIGTERM (or SIGKILL).
Usage: role_child.py CONFIG [ACK_WAIT_S]"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from agent.config import load_config
from agent.venue.leader import VenueRole


async def main(config_path: str, ack_wait_s: float) -> None:
    config = load_config(config_path)
    token = Path(config.api["token_file"]).read_text(encoding="utf-8").strip()
    role = VenueRole(config, token, config_path=config_path, ack_wait_s=ack_wait_s)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    status_file = config.store_dir / "role-status.json"

    def status() -> dict[str, object]:
        """The role's status, and under `platform_link` what the daemon's report shows as
        `platform` (the leader's link, or None before this device led)."""
        return {**role.get_status(), "platform_link": role.platform_status()}

    async def report() -> None:
        while not stop.is_set():
            status_file.write_text(json.dumps(status(), default=str))
            await asyncio.sleep(0.2)

    reporter = asyncio.create_task(report())
    print("READY", flush=True)
    await role.run(stop)
    await reporter
    status_file.write_text(json.dumps(status(), default=str))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 3.0))
