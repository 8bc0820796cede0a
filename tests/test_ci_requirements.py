"""What .ci/run installs may skip on a developer's machine, never under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

NEEDS_MISSING = """
from tests.conftest import require, require_module, require_tool


def test_a_tool():
    require_tool("no-such-tool-hoosh", why="no-such-tool-hoosh is not installed")


def test_a_module():
    require_module("no_such_module_hoosh", "no_such_module_hoosh is not installed")


def test_a_model_file(tmp_path):
    require((tmp_path / "model.gguf").exists(), "the model file is not pulled")


def test_what_is_there():
    assert require_tool("sh", why="sh") and require_module("json", "json").dumps([]) == "[]"
"""


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_missing.py"
    test.write_text(NEEDS_MISSING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(test)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_off_ci_a_missing_requirement_skips(tmp_path: Path, ci: str | None) -> None:
    out = run_pytest(tmp_path, ci)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 3 skipped" in out.stdout, out.stdout
    assert "the model file is not pulled" in out.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_missing_requirement_fails(tmp_path: Path, ci: str) -> None:
    out = run_pytest(tmp_path, ci)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "3 failed, 1 passed" in out.stdout, out.stdout
    for why in ("no-such-tool-hoosh is not installed", "the model file is not pulled",
                "no_such_module_hoosh is not installed"):  # fmt: skip
        assert f"CI must provide this (see .ci/run): {why}" in out.stdout, out.stdout
