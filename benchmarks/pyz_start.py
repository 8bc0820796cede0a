"""Start-up to the first healthy response: the single file (first and second start) beside the
checkout's quick start.

    .venv/bin/python benchmarks/pyz_start.py [--pyz dist/hoosh-edge.pyz] [--runs 3]

Each start is a new process from an empty folder, timed from spawn to the first 200 on /health.
The single file runs under a new venv without pip or site packages; its first start unpacks into
an empty $HOOSH_EDGE_CACHE, its later starts reuse that. ``python hoosh_edge.py`` runs from the
checkout with this venv. The config serves the checkout's models/ (nothing preloaded).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def time_to_healthy(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds from spawning ``argv`` to its first 200 on /health (it prints its URL first)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if "listening on" not in first:
            raise SystemExit(f"{argv[1]} did not start: {first!r}")
        url = first.strip().rsplit(" ", 1)[-1]
        while True:
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.ConnectionError:
                pass
            if time.monotonic() - started > 300:
                raise SystemExit("never healthy")
            time.sleep(0.01)
    finally:
        stop(proc)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyz", default=str(ROOT / "dist" / "hoosh-edge.pyz"))
    p.add_argument("--runs", type=int, default=3, help="second starts and checkout starts")
    args = p.parse_args()
    pyz = Path(args.pyz).resolve()
    if not pyz.is_file():
        raise SystemExit(f"no {pyz}: build it with scripts/build-pyz")
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and k not in ("PYTHONPATH", "HOOSH_EDGE_CONFIG")}  # fmt: skip
    env["PYTHONUNBUFFERED"] = "1"
    with tempfile.TemporaryDirectory(prefix="pyz-start-") as tmp_name:
        tmp = Path(tmp_name)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(tmp / "bare")], check=True)
        bare = tmp / "bare" / "bin" / "python"
        cache = tmp / "cache"
        env["HOOSH_EDGE_CACHE"] = str(cache)

        def start(argv: list[str], n: int) -> float:
            box = tmp / f"box{n}"
            box.mkdir()
            cfg = box / "config.toml"
            cfg.write_text(f'[server]\ndata_dir = "data"\nmodels_dir = "{ROOT / "models"}"\n')
            return time_to_healthy([*argv, "--config", str(cfg), "--port", "0"], box, env)

        first = start([str(bare), str(pyz), "serve"], 0)
        unpacked = du(cache)
        again = [start([str(bare), str(pyz), "serve"], 1 + i) for i in range(args.runs)]
        # From the checkout, with this venv: hoosh_edge.py takes serve's options as they are.
        quick = [str(sys.executable), str(ROOT / "hoosh_edge.py")]
        checkout = [start(quick, 100 + i) for i in range(args.runs)]
    print(f"file {pyz.name}: {pyz.stat().st_size / 1e6:.1f} MB, unpacked {unpacked / 1e6:.0f} MB")
    print(f"{'start':<44} {'to first healthy /health':>24}")
    print(f"{'single file, first start (unpacks)':<44} {first:>22.2f} s")
    print(f"{f'single file, second start (median of {args.runs})':<44} "
          f"{statistics.median(again):>22.2f} s")  # fmt: skip
    print(f"{f'python hoosh_edge.py, checkout (median of {args.runs})':<44} "
          f"{statistics.median(checkout):>22.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
