"""Child processes the benchmarks measure: the gateway and a fake OpenAI upstream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_FAKE = """
import sys, time
sys.path.insert(0, {root!r})
from tests.fake_openai import FakeOpenAI
with FakeOpenAI(api_key="sk-bench") as fake:
    print(fake.url, flush=True)
    fake.requests = type("Drop", (list,), {{"append": lambda self, x: None}})()
    time.sleep(10**6)
"""


def spawn_fake_openai() -> tuple[subprocess.Popen, str]:
    """A fake OpenAI upstream (key ``sk-bench``) in its own process, and its base URL."""
    proc = subprocess.Popen([sys.executable, "-c", _FAKE.format(root=str(ROOT))],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def spawn_gateway(config_text: str, tmp: Path, root: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """``python hoosh_edge.py`` (of the checkout ``root``) on a free port with this config."""
    cfg = Path(tmp) / "bench.toml"
    cfg.write_text(config_text)
    return spawn_listening([str(Path(root) / "hoosh_edge.py"), "--config", str(cfg), "--port", "0"],
                           tmp)  # fmt: skip


def local_llm_toml(tmp: Path, model_id: str, path: str | Path, *, threads: int, n_ctx: int,
                   extra: str = "") -> str:  # fmt: skip
    """A gateway config serving only ``path`` as ``model_id``, loaded at start-up, never unloaded.

    ``extra`` adds ``[local.llm]`` lines (e.g. ``prompt_cache_mb = 256``).
    """
    return f"""
[server]
log_level = "warning"
data_dir = "{Path(tmp) / "data"}"
models_dir = "{Path(tmp) / "no-models"}"
[local.llm]
n_threads = {threads}
n_ctx = {n_ctx}
keep_alive_s = 0
preload = ["{model_id}"]
{extra}[local.llm.models]
"{model_id}" = "{Path(path).resolve()}"
"""


def spawn_listening(argv: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    """``python ARGV...`` whose first line ends in the URL it listens on; the child and that URL."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True, cwd=cwd,
                            env=env)  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if "listening on" not in first:
        proc.kill()
        raise SystemExit(f"{Path(argv[0]).name} did not start: {first!r}")
    return proc, first.strip().rsplit(" ", 1)[-1]


def wait_healthy(url: str, tries: int = 100) -> None:
    """Wait until ``url``/health answers 200 (the gateway has opened its port when it prints)."""
    import time

    import requests

    for _ in range(tries):
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    """Terminate a child, then kill it if it will not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
