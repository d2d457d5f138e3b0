"""Hardware drivers: scan sources (`Reader`) and relays (`Output`) opened by URL.

    from drivers import open_reader, open_output
    reader = open_reader("serial:///dev/ttyACM0")
    reader.start(on_scan, on_state)
"""

from drivers.base import Chunk, DeviceLost, Output, Reader, Scan
from drivers.registry import default_role, open_output, open_reader, parse_url

__all__ = [
    "Chunk", "DeviceLost", "Output", "Reader", "Scan",
    "default_role", "open_output", "open_reader", "parse_url",
]
