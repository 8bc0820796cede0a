"""What the box itself says: free memory, CPU temperature and load (Linux /proc, /sys, cgroups).

The one reader of these files: the model pool's memory check, device-aware routing, the
``/metrics`` gauges, the status page and ``hoosh-edge doctor`` all ask here, so they agree.

Free memory is the smaller of the kernel's ``MemAvailable`` and what our cgroup (systemd
``MemoryMax``, a container's ``--memory``) still allows: under such a limit the OOM killer
strikes long before ``MemAvailable`` runs out. Every function takes ``root`` so tests can point
it at a fake tree; a missing or unreadable file means "unknown" (None), never an error.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

# cgroup v1 writes "no limit" as the largest page-aligned 63-bit number; anything past this is none.
_V1_UNLIMITED = 2**62


@dataclass(frozen=True)
class Memory:
    """Bytes we may still use and bytes we may use at all; None where unknown."""

    available: int | None
    total: int | None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None  # "max" (v2 unlimited) or garbage


def meminfo(root: str = "/") -> dict[str, int]:
    """/proc/meminfo in bytes (MemTotal, MemAvailable, ...); empty where there is none."""
    out: dict[str, int] = {}
    for line in (_read(Path(root, "proc/meminfo")) or "").splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * (1024 if len(parts) > 1 else 1)  # "kB" or a bare count
    return out


def _stat(path: Path, name: str) -> int:
    """One counter of a cgroup's memory.stat, 0 when absent."""
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0


def _limits_v2(mount: Path, rel: str) -> list[tuple[int, int]]:
    """(limit, headroom) of our cgroup and each ancestor with a memory.max that is a number."""
    out = []
    node = mount / rel.strip("/")
    while True:
        limit = _int(node / "memory.max")
        current = _int(node / "memory.current")
        if limit is not None and current is not None:
            # Inactive file cache is the first thing the kernel reclaims under the limit.
            used = max(0, current - _stat(node / "memory.stat", "inactive_file"))
            out.append((limit, max(0, limit - used)))
        if node == mount or mount not in node.parents:
            return out
        node = node.parent


def _limits_v1(mount: Path, rel: str) -> list[tuple[int, int]]:
    """(limit, headroom) of our v1 memory cgroup, or of the mount root inside a container."""
    for node in (mount / rel.strip("/"), mount):
        limit = _int(node / "memory.limit_in_bytes")
        usage = _int(node / "memory.usage_in_bytes")
        if limit is not None and usage is not None:
            if limit >= _V1_UNLIMITED:
                return []
            used = max(0, usage - _stat(node / "memory.stat", "total_inactive_file"))
            return [(limit, max(0, limit - used))]
    return []


def cgroup_limits(root: str = "/") -> list[tuple[int, int]]:
    """(limit, headroom) in bytes of every memory limit over this process (v2 or v1 cgroups)."""
    out: list[tuple[int, int]] = []
    for line in (_read(Path(root, "proc/self/cgroup")) or "").splitlines():
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and rel:  # "0::/system.slice/hoosh-edge.service"
            out += _limits_v2(Path(root, "sys/fs/cgroup"), rel)
        elif "memory" in controllers.split(","):  # "4:memory:/system.slice/..."
            out += _limits_v1(Path(root, "sys/fs/cgroup/memory"), rel)
    return out


def memory(root: str = "/") -> Memory:
    """Free and total memory for this process: /proc/meminfo, lowered by any cgroup limit."""
    info = meminfo(root)
    available, total = info.get("MemAvailable"), info.get("MemTotal")
    for limit, headroom in cgroup_limits(root):
        available = headroom if available is None else min(available, headroom)
        total = limit if total is None else min(total, limit)
    return Memory(available, total)


def mem_available_bytes(root: str = "/") -> int | None:
    """Bytes we may still use before the kernel or our cgroup says no; None where unknown."""
    return memory(root).available


def cpu_temperature_c(root: str = "/") -> float | None:
    """The hottest thermal zone in °C, or None where the box exposes none."""
    temps = []
    for path in glob.glob(os.path.join(root, "sys/class/thermal/thermal_zone*/temp")):
        milli = _int(Path(path))  # a powered-off sensor refuses reads: skip it
        if milli is not None:
            temps.append(milli / 1000)
    return max(temps) if temps else None


def load_average(root: str = "/") -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the kernel does not say."""
    fields = (_read(Path(root, "proc/loadavg")) or "").split()[:3]
    try:
        if len(fields) == 3:
            return [round(float(x), 2) for x in fields]
        if root == "/":  # not Linux: the C library may still know
            return [round(x, 2) for x in os.getloadavg()]
    except (OSError, ValueError):
        pass
    return None


def snapshot(root: str = "/") -> dict[str, object]:
    """Temperature, memory and load of the box, as the status page shows them."""
    mem = memory(root)
    return {
        "cpu_temp_c": cpu_temperature_c(root),
        "mem_available_bytes": mem.available,
        "mem_total_bytes": mem.total,
        "load_avg": load_average(root),
        "cpu_count": os.cpu_count(),
    }
