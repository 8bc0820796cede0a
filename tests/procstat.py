"""What /proc says of another process: peak memory, CPU time, and when it goes idle.

Shared by the hostile-input tests and the benchmarks, so a test and the benchmark that quotes
its numbers measure the same way.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no VmHWM")


def reset_peak_rss(pid: int) -> int:
    """Set VmHWM back to the current RSS (Linux: write 5 to clear_refs); returns it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_rss(pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # names hold spaces
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime: fields 14 and 15


def seconds_until_idle(pid: int, limit_s: float, window_s: float = 0.5) -> float:
    """How long until the process uses under 10% of a core over ``window_s`` (or ``limit_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        cpu = cpu_seconds(pid)
        time.sleep(window_s)
        if cpu_seconds(pid) - cpu < 0.1 * window_s:
            return time.monotonic() - started - window_s
    return limit_s
