"""What the machine can give: memory available now (for the estimates that refuse work too big)."""

from __future__ import annotations

import os


def available_memory() -> int | None:
    """Bytes this machine can still give (MemAvailable of /proc/meminfo), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
