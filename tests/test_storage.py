"""A full disk through the gateway process: paid calls refused, local ones served, no restart.

The data folder sits on a 2 MiB tmpfs that the test fills to the last byte and then frees again
(we run as root; without the right to mount, the test says so and skips).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, openai_provider_toml
from tests.synth_gguf import make_tiny_gguf

PRICED = """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 10
output_usd_per_mtok = 100
"""

CLOUD_RULE = """
[[budgets]]
name = "cloud-daily"
scope = "cloud"
metric = "usd"
limit = "10"
period = "day"
action = "block"
"""


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs mounted for this test only."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path) -> Path:
    """Write a file until the disk takes not one byte more."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == 28, e  # ENOSPC
    finally:
        os.close(fd)
    assert os.statvfs(mnt).f_bavail == 0
    return filler


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def local_toml(model: Path) -> str:
    return f"""
[local.llm]
n_threads = 1
n_ctx = 512
[local.llm.models]
tiny = "{model}"
"""


def paid(gw, **extra) -> requests.Response:
    body = {"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hello"}], **extra}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)


def local(gw, content: str = "hi") -> requests.Response:
    body = {"model": "tiny", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": content}]}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, timeout=60)


def health(gw) -> dict:
    r = requests.get(gw.url + "/v1/health", timeout=5)
    assert r.status_code == 200
    return r.json()


def requests_by_provider(gw) -> dict[str, int]:
    r = requests.get(gw.url + "/v1/usage?period=day&group_by=provider", timeout=5)
    assert r.status_code == 200, r.text
    return {row["provider"]: row["requests"] for row in r.json()["data"]}


def test_full_disk_refuses_paid_calls_serves_local_ones_and_recovers(
    small_disk, tiny, fake_openai, gateway_factory
):
    data = small_disk / "data"
    cfg = f'[server]\ndata_dir = "{data}"\n' + local_toml(tiny) + openai_provider_toml(fake_openai)
    gw = gateway_factory(cfg + PRICED + CLOUD_RULE)
    assert paid(gw).status_code == 200
    assert local(gw, "warm").status_code == 200
    assert health(gw)["storage"]["state"] == "ok"
    upstream_before = len(fake_openai.chat_requests)

    filler = fill(small_disk)
    r = paid(gw)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "storage_unavailable" and err["type"] == "server_error"
    assert str(data) in err["message"] and "full" in err["message"]
    s = paid(gw, stream=True)  # refused before the first byte: a plain JSON error
    assert s.status_code == 503 and s.json()["error"]["code"] == "storage_unavailable"
    assert len(fake_openai.chat_requests) == upstream_before  # nothing went upstream unbooked

    served = [local(gw, f"while full {i}") for i in range(3)]
    assert [x.status_code for x in served] == [200, 200, 200], [x.text for x in served]
    assert all(x.json()["choices"][0]["message"]["content"] is not None for x in served)
    doc = health(gw)
    assert doc["status"] == "degraded"
    st = doc["storage"]
    assert st["state"] == "unavailable" and str(data) in st["error"] and st["data_dir"] == str(data)
    assert st["pending_usage"] == 3 and st["dropped_usage"] == 0
    live = requests.get(gw.url + "/health", timeout=5)
    assert live.status_code == 200 and live.json()["storage"] == "unavailable"
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert "hoosh_storage_writable 0" in metrics and "hoosh_usage_pending 3" in metrics
    status = subprocess.run([sys.executable, "-m", "hoosh_edge", "status", "--server", gw.url],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert status.stdout.startswith(f"gateway {gw.url}: degraded"), status.stdout
    assert f"storage {data}: unavailable" in status.stdout
    assert "(3 usage record(s) wait in memory)" in status.stdout

    filler.unlink()  # space is back; no restart
    r = paid(gw)
    assert r.status_code == 200, r.text
    assert r.headers["X-Hoosh-Provider"] == "fake"
    doc = health(gw)
    assert doc["status"] == "ok" and doc["storage"]["state"] == "ok"
    assert doc["storage"]["pending_usage"] == 0
    # Every call served while the disk was full reached the books once space returned.
    assert requests_by_provider(gw) == {"fake": 2, "local": 4}
    assert "hoosh_storage_writable 1" in requests.get(gw.url + "/metrics", timeout=5).text

    log = gw.log
    assert "Traceback" not in log, log
    assert log.count("storage: The gateway cannot write to its data folder") == 1, log
    assert "cache store failed" in log  # the answers above were served without being cached
    assert "takes writes again" in log


def test_full_disk_without_budget_rules_still_books_every_paid_call(
    small_disk, fake_openai, gateway_factory
):
    data = small_disk / "data"
    cfg = f'[server]\ndata_dir = "{data}"\n' + openai_provider_toml(fake_openai) + PRICED
    gw = gateway_factory(cfg)
    assert paid(gw).status_code == 200

    filler = fill(small_disk)
    # Nothing was known to be wrong: this one is served, and its spend waits in memory...
    first = paid(gw)
    assert first.status_code == 200, first.text
    assert health(gw)["storage"]["pending_usage"] == 1
    # ...now the failure is known, and no paid call goes out that could not be booked.
    refused = paid(gw)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "storage_unavailable"
    assert len(fake_openai.chat_requests) == 2

    filler.unlink()
    assert paid(gw).status_code == 200
    assert health(gw)["storage"] == {**health(gw)["storage"], "state": "ok", "pending_usage": 0}
    assert requests_by_provider(gw) == {"fake": 3}
    assert "Traceback" not in gw.log, gw.log
