"""What the box itself says: CPU temperature and memory (Linux /sys and /proc)."""

from __future__ import annotations

import glob


def cpu_temperature_c(pattern: str = "/sys/class/thermal/thermal_zone*/temp") -> float | None:
    """The hottest thermal zone in °C, or None where the box exposes none."""
    temps = []
    for path in glob.glob(pattern):
        try:
            with open(path) as f:
                temps.append(int(f.read().strip()) / 1000)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


def mem_info(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo in bytes (MemTotal, MemAvailable, ...)."""
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[name] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    except OSError:
        pass
    return out
