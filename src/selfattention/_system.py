"""What the machine can give: memory available now (for the estimates that refuse work too big)."""

from __future__ import annotations

import os


def check_fits(nbytes: int, what: str) -> None:
    """ValueError when ``what`` (a description) would take more than the memory available now;
    asked only past 256 MiB, so that ordinary sizes never read /proc, and only when tensors are
    made on the CPU (not under ``with torch.device("meta")`` or a GPU default)."""
    if nbytes < 1 << 28:
        return
    import torch

    if torch.get_default_device().type != "cpu":
        return
    have = available_memory()
    if have is not None and nbytes > have:
        raise ValueError(f"{what} needs {nbytes / 2**30:.3g} GiB but {have / 2**30:.1f} GiB are available")


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
