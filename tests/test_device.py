"""The box's own readings from fake /proc, /sys and cgroup trees: one reader for every caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoosh_edge import device
from hoosh_edge.backends.engines.pool import ModelPool, ModelSlot
from hoosh_edge.errors import InsufficientMemory

KiB, MiB = 1024, 1024 * 1024
SERVICE = "/system.slice/hoosh-edge.service"


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def box(root: Path, *, avail_kb: int = 2_000_000, total_kb: int = 8_000_000) -> Path:
    """A fake root with /proc/meminfo and no cgroup files yet."""
    write(root, "proc/meminfo", f"MemTotal: {total_kb} kB\nMemFree: 1 kB\nMemAvailable: {avail_kb} kB\n"
          "HugePages_Total:       0\n")  # fmt: skip
    return root


def v2(root: Path, rel: str, *, limit: str, current: int, inactive_file: int = 0) -> None:
    base = "sys/fs/cgroup" + rel
    write(root, f"{base}/memory.max", limit + "\n")
    write(root, f"{base}/memory.current", f"{current}\n")
    write(root, f"{base}/memory.stat", f"anon 1\ninactive_file {inactive_file}\nactive_file 7\n")


def test_meminfo_alone_when_there_is_no_cgroup(tmp_path):
    root = box(tmp_path)
    assert device.meminfo(str(root))["HugePages_Total"] == 0  # a bare count, not kB
    assert device.memory(str(root)) == device.Memory(2_000_000 * KiB, 8_000_000 * KiB)


def test_cgroup_v2_max_means_no_limit(tmp_path):
    root = box(tmp_path)
    write(root, "proc/self/cgroup", f"0::{SERVICE}\n")
    v2(root, SERVICE, limit="max", current=900 * MiB)
    assert device.memory(str(root)) == device.Memory(2_000_000 * KiB, 8_000_000 * KiB)


def test_cgroup_v2_limit_below_memavailable_wins(tmp_path):
    root = box(tmp_path)
    write(root, "proc/self/cgroup", f"0::{SERVICE}\n")
    # MemoryMax=1G with 700 MiB charged, 100 MiB of it reclaimable file cache: 400 MiB left.
    v2(root, SERVICE, limit=str(1024 * MiB), current=700 * MiB, inactive_file=100 * MiB)
    assert device.memory(str(root)) == device.Memory(424 * MiB, 1024 * MiB)
    assert device.mem_available_bytes(str(root)) == 424 * MiB


def test_cgroup_v2_parent_slice_limit_counts_too(tmp_path):
    root = box(tmp_path)
    write(root, "proc/self/cgroup", f"0::{SERVICE}\n")
    v2(root, SERVICE, limit="max", current=50 * MiB)
    v2(root, "/system.slice", limit=str(512 * MiB), current=500 * MiB)  # the slice is nearly full
    assert device.memory(str(root)) == device.Memory(12 * MiB, 512 * MiB)


def test_cgroup_limit_above_memavailable_changes_nothing(tmp_path):
    root = box(tmp_path, avail_kb=100_000)
    write(root, "proc/self/cgroup", f"0::{SERVICE}\n")
    v2(root, SERVICE, limit=str(4096 * MiB), current=10 * MiB)
    assert device.memory(str(root)) == device.Memory(100_000 * KiB, 4096 * MiB)


def test_cgroup_over_its_limit_has_no_headroom(tmp_path):
    root = box(tmp_path)
    write(root, "proc/self/cgroup", "0::/\n")  # a container: its own cgroup is the mount root
    v2(root, "", limit=str(256 * MiB), current=300 * MiB)
    assert device.mem_available_bytes(str(root)) == 0


def test_cgroup_v1_limit_and_unlimited(tmp_path):
    root = box(tmp_path)
    write(
        root, "proc/self/cgroup", f"12:pids:{SERVICE}\n4:cpu,memory:{SERVICE}\n1:name=systemd:/\n"
    )
    base = f"sys/fs/cgroup/memory{SERVICE}"
    write(root, f"{base}/memory.limit_in_bytes", f"{768 * MiB}\n")
    write(root, f"{base}/memory.usage_in_bytes", f"{600 * MiB}\n")
    write(root, f"{base}/memory.stat", f"cache 5\ntotal_inactive_file {32 * MiB}\n")
    assert device.memory(str(root)) == device.Memory(200 * MiB, 768 * MiB)
    write(root, f"{base}/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    assert device.memory(str(root)) == device.Memory(2_000_000 * KiB, 8_000_000 * KiB)


def test_cgroup_v1_in_a_container_reads_the_mount_root(tmp_path):
    root = box(tmp_path)
    write(root, "proc/self/cgroup", "5:memory:/docker/0123abcd\n")  # the host's path, not ours
    write(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", f"{300 * MiB}\n")
    write(root, "sys/fs/cgroup/memory/memory.usage_in_bytes", f"{100 * MiB}\n")
    assert device.memory(str(root)) == device.Memory(200 * MiB, 300 * MiB)


def test_missing_and_garbled_files_mean_unknown(tmp_path):
    assert device.memory(str(tmp_path)) == device.Memory(None, None)
    assert device.cpu_temperature_c(str(tmp_path)) is None
    write(tmp_path, "proc/meminfo", "MemAvailable: lots kB\n\x00\x00\n")
    write(tmp_path, "proc/self/cgroup", f"0::{SERVICE}\n")
    write(tmp_path, f"sys/fs/cgroup{SERVICE}/memory.max", "12345\n")  # no memory.current
    write(tmp_path, "proc/loadavg", "high\n")
    assert device.memory(str(tmp_path)) == device.Memory(None, None)
    assert device.load_average(str(tmp_path)) is None
    # Only a cgroup limit known: it alone decides.
    write(tmp_path, f"sys/fs/cgroup{SERVICE}/memory.current", f"{45}\n")
    assert device.memory(str(tmp_path)) == device.Memory(12300, 12345)


def test_hottest_thermal_zone_and_load_average(tmp_path):
    for i, milli in enumerate(["48312", "61000", "garbage"]):
        write(tmp_path, f"sys/class/thermal/thermal_zone{i}/temp", milli + "\n")
    write(tmp_path, "proc/loadavg", "0.52 1.234 2.00 3/456 7890\n")
    assert device.cpu_temperature_c(str(tmp_path)) == 61.0
    assert device.load_average(str(tmp_path)) == [0.52, 1.23, 2.0]
    snap = device.snapshot(str(box(tmp_path)))
    assert snap["cpu_temp_c"] == 61.0 and snap["load_avg"] == [0.52, 1.23, 2.0]
    assert (snap["mem_available_bytes"], snap["mem_total_bytes"]) == (
        2_000_000 * KiB,
        8_000_000 * KiB,
    )


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="no /proc here: not Linux")
def test_this_box_reads_sensibly():
    mem = device.memory()
    assert mem.available is not None and mem.total is not None
    assert 0 <= mem.available <= mem.total
    assert device.load_average() is not None


def test_model_pool_refuses_a_load_the_cgroup_cannot_hold(tmp_path):
    """MemAvailable says 2 GB, MemoryMax leaves 400 MiB: a 600 MiB model is refused."""
    root = box(tmp_path)
    write(root, "proc/self/cgroup", f"0::{SERVICE}\n")
    v2(root, SERVICE, limit=str(1024 * MiB), current=624 * MiB)
    pool = ModelPool(reserve_bytes=0, mem_available=lambda: device.mem_available_bytes(str(root)))
    slot = pool.register(ModelSlot("big", "llm", object, estimate_bytes=600 * MiB))
    with pytest.raises(InsufficientMemory, match=r"needs about 600 MiB .* 400 MiB is available"):
        pool.make_room(slot)
    v2(root, SERVICE, limit=str(1024 * MiB), current=24 * MiB)  # another process let go
    pool.make_room(slot)  # fits now: no error
