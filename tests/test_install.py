"""scripts/install.sh into a throwaway root, and the systemd unit it installs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "install.sh"
UNIT = ROOT / "systemd" / "hoosh-edge.service"
EXEC_START = "/opt/hoosh-edge/bin/hoosh-edge"


def run_install(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installer with a clean environment; fail loudly with its output."""
    env = {k: v for k, v in os.environ.items() if k != "HOOSH_EDGE_CONFIG"}
    env["PYTHON"] = sys.executable  # a Python >= 3.10 is known to be here
    proc = subprocess.run(
        ["bash", str(INSTALL), *args], env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"install.sh {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (relative), to compare before and after."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- fast: options and the dry run ---------------------------------------------------------------


def test_dry_run_prints_the_steps_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "root"
    out = run_install("--root", str(target), "--dry-run", "--no-apt").stdout
    assert not target.exists()
    assert "dry run" in out
    for expected in (
        "==> venv",
        f"-m venv {target}/opt/hoosh-edge/venv",
        "pip install",
        f"==> config {target}/etc/hoosh-edge/config.toml",
        "models pull smollm2",
        "models pull whisper-tiny.en",
        "models pull joe",
        f"install -m 0644 {ROOT}/systemd/hoosh-edge.service {target}/etc/systemd/system/hoosh-edge.service",
    ):
        assert expected in out, (expected, out)
    # Under --root there is no user, no ownership and no systemctl, not even as printed steps.
    assert "useradd" not in out and "chown" not in out and "systemctl enable" not in out


def test_a_python_without_the_piper_phonemize_wheel_also_pulls_its_espeak_ng_data(
    tmp_path: Path,
) -> None:
    """On 3.12+ the voices speak through libespeak-ng: the wheel's data is pulled for them."""
    fake = tmp_path / "python3.13"  # this Python, answering version checks as a 3.13 would
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ]; then exec {sys.executable} -c "import sys; '
        f"sys.version_info = (3, 13, 0, 'final', 0)\n$2\"; fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "HOOSH_EDGE_CONFIG"}
    target = tmp_path / "root"
    args = ["bash", str(INSTALL), "--root", str(target), "--dry-run", "--no-apt"]
    newer = subprocess.run(args, env={**env, "PYTHON": str(fake)}, capture_output=True,
                           text=True, timeout=600, check=True).stdout  # fmt: skip
    assert "default models (smollm2 whisper-tiny.en joe espeak-ng-data)" in newer
    assert "models pull espeak-ng-data --models-dir" in newer
    this = run_install("--root", str(target), "--dry-run", "--no-apt").stdout
    assert (
        sys.version_info >= (3, 12) or "models pull espeak-ng-data" not in this
    )  # wheel has its own


def test_dry_run_into_an_existing_root_leaves_it_empty(tmp_path: Path) -> None:
    out = run_install("--root", str(tmp_path), "--dry-run", "--no-apt", "--no-models").stdout
    assert tree(tmp_path) == []
    assert "skipped (--no-models)" in out and "models pull smollm2 --models-dir" not in out


def test_dry_run_on_the_real_system_only_prints(tmp_path: Path) -> None:
    """Without --root the plan names the real paths and the user, and still touches nothing."""
    if Path("/opt/hoosh-edge").exists() or Path("/etc/hoosh-edge").exists():
        pytest.skip("hoosh-edge is installed on this machine; not comparing")
    out = run_install("--dry-run", "--no-apt", "--no-models").stdout
    assert "-m venv /opt/hoosh-edge/venv" in out
    assert "==> config /etc/hoosh-edge/config.toml" in out
    if "service user hoosh-edge\n    exists" not in out:
        assert "useradd --system" in out
    assert not Path("/opt/hoosh-edge").exists() and not Path("/etc/hoosh-edge").exists()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    proc = run_install("--root", str(tmp_path), "--purge", check=False)
    assert proc.returncode == 1 and "--purge only goes with --uninstall" in proc.stderr
    proc = run_install("--frobnicate", check=False)
    assert proc.returncode == 1 and "unknown option '--frobnicate'" in proc.stderr
    assert tree(tmp_path) == []


def test_help_lists_the_options() -> None:
    out = run_install("--help").stdout
    for opt in ("--root DIR", "--dry-run", "--no-models", "--no-apt", "--uninstall", "--purge",
                "--pyz FILE"):  # fmt: skip
        assert opt in out


def small_zipapp(path: Path, main: str) -> Path:
    """A zipapp with this ``__main__``: how install.sh sees a file before it copies it (the real
    hoosh-edge.pyz is installed and served in tests/test_pyz.py)."""
    import zipapp

    src = path.parent / (path.stem + "-src")
    src.mkdir()
    (src / "__main__.py").write_text(main)
    zipapp.create_archive(src, path)
    return path


def test_pyz_dry_run_plans_the_file_and_no_venv(tmp_path: Path) -> None:
    pyz = small_zipapp(tmp_path / "hoosh-edge.pyz", "print('CPython for this box')\n")
    target = tmp_path / "root"
    out = run_install("--root", str(target), "--dry-run", "--pyz", str(pyz)).stdout
    assert not target.exists()
    assert "hoosh-edge.pyz: CPython for this box" in out  # it asked the file what it is for
    assert f"install -m 0644 {pyz} {target}/opt/hoosh-edge/hoosh-edge.pyz" in out
    assert f"launcher {target}/opt/hoosh-edge/bin/hoosh-edge" in out
    assert f"==> unpacking hoosh-edge.pyz into {target}/opt/hoosh-edge/cache" in out
    assert "build prerequisites: none" in out
    assert "-m venv" not in out and "pip install" not in out and "llama" not in out
    assert f"{target}/opt/hoosh-edge/bin/hoosh-edge models pull smollm2" in out


def test_pyz_for_another_python_or_no_file_is_refused(tmp_path: Path) -> None:
    main = "import sys\nsys.stderr.write('this file is for CPython 3.99\\n')\nsys.exit(2)\n"
    pyz = small_zipapp(tmp_path / "other.pyz", main)
    proc = run_install("--root", str(tmp_path / "r"), "--pyz", str(pyz), check=False)
    assert proc.returncode == 1 and "this file is for CPython 3.99" in proc.stderr, proc.stderr
    assert not (tmp_path / "r/opt").exists()
    proc = run_install(
        "--root", str(tmp_path / "r"), "--pyz", str(tmp_path / "nope.pyz"), check=False
    )
    assert proc.returncode == 1 and "--pyz: no file" in proc.stderr
    proc = run_install("--uninstall", "--pyz", str(pyz), check=False)
    assert proc.returncode == 1 and "--pyz does not go with --uninstall" in proc.stderr


# ---- the unit file ---------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """KEY -> values of a unit file (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def test_unit_says_what_the_service_needs() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{EXEC_START} serve --config /etc/hoosh-edge/config.toml"]
    assert s["WatchdogSec"] == ["30"] and s["Restart"] == ["on-failure"]
    assert s["User"] == ["hoosh-edge"] and s["Group"] == ["hoosh-edge"]
    assert s["EnvironmentFile"] == ["-/etc/hoosh-edge/env"]
    assert s["StateDirectory"] == ["hoosh-edge"] and s["ConfigurationDirectory"] == ["hoosh-edge"]
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert s["KillSignal"] == ["SIGTERM"]
    # The server drains for up to server.drain_timeout_s on SIGTERM; systemd must wait longer.
    from hoosh_edge.config.schema import ServerConfig

    assert int(s["TimeoutStopSec"][0]) > ServerConfig().drain_timeout_s
    assert re.fullmatch(r"\d+[KMGT]?", s["MemoryMax"][0])
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectControlGroups"):  # fmt: skip
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]


def systemd_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


@pytest.mark.usefixtures("systemd_analyze_path")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify checks that ExecStart exists; a throwaway copy points it at a real executable."""
    text = UNIT.read_text()
    assert EXEC_START in text
    copy = tmp_path / "hoosh-edge.service"
    copy.write_text(text.replace(EXEC_START, shutil.which("true") or "/bin/true"))
    proc = systemd_verify(copy)
    assert proc.returncode == 0, proc.stderr
    assert "hoosh-edge.service" not in proc.stderr, proc.stderr  # no warnings about our unit


@pytest.mark.usefixtures("systemd_analyze_path")
def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The verify test above can fail: a misspelt directive is reported."""
    copy = tmp_path / "hoosh-edge.service"
    text = (
        UNIT.read_text().replace(EXEC_START, "/bin/true").replace("WatchdogSec=", "WatchdogSecs=")
    )
    copy.write_text(text)
    assert "WatchdogSecs" in systemd_verify(copy).stderr


@pytest.mark.usefixtures("shellcheck_path")
def test_install_script_is_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- slow: a real install into a temporary root ------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Install twice into one root, editing the config in between (the edit must survive)."""
    root = tmp_path_factory.mktemp("install-root")
    run_install("--root", str(root), "--no-apt", "--no-models")
    config = root / "etc/hoosh-edge/config.toml"
    config.write_text(config.read_text().replace("port = 8088", "port = 9099  # edited"))
    env = root / "etc/hoosh-edge/env"
    env.write_text("OPENAI_API_KEY=sk-operator-edit\n")
    second = run_install("--root", str(root), "--no-apt", "--no-models")
    assert "venv exists; upgrading" in second.stdout
    assert "exists; left as it is" in second.stdout
    yield root


@pytest.mark.slow
def test_install_lays_out_the_tree(installed: Path) -> None:
    r = installed
    for path in ("opt/hoosh-edge/venv/bin/python", "opt/hoosh-edge/venv/bin/hoosh-edge",
                 "opt/hoosh-edge/bin/hoosh-edge",
                 "opt/hoosh-edge/docs/operating.md", "etc/hoosh-edge/config.toml",
                 "etc/hoosh-edge/env", "etc/systemd/system/hoosh-edge.service"):  # fmt: skip
        assert (r / path).exists(), path
    assert (r / "var/lib/hoosh-edge/models").is_dir()
    assert (r / "etc/systemd/system/hoosh-edge.service").read_text() == UNIT.read_text()
    assert (r / "etc/hoosh-edge/env").stat().st_mode & 0o777 == 0o600
    assert (r / "etc/hoosh-edge/config.toml").stat().st_mode & 0o777 == 0o640
    assert (r / "var/lib/hoosh-edge").stat().st_mode & 0o777 == 0o750


@pytest.mark.slow
def test_second_run_kept_the_operators_edits(installed: Path) -> None:
    text = (installed / "etc/hoosh-edge/config.toml").read_text()
    assert "port = 9099  # edited" in text
    assert (installed / "etc/hoosh-edge/env").read_text() == "OPENAI_API_KEY=sk-operator-edit\n"


@pytest.mark.slow
def test_installed_venv_is_a_real_install_not_the_checkout(installed: Path) -> None:
    py = installed / "opt/hoosh-edge/venv/bin/python"
    code = "import hoosh_edge, sys; print(hoosh_edge.__file__)"
    # From / so the checkout cannot be imported by accident through the working directory.
    out = subprocess.run([str(py), "-c", code], cwd="/", capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    assert out.startswith(str(installed / "opt/hoosh-edge/venv/lib/"))
    assert "site-packages" in out  # not an editable install pointing back at the checkout


@pytest.mark.slow
def test_installed_venv_runs_the_llama_build_setup_made(installed: Path) -> None:
    """The service gets the same llama.cpp wheel as scripts/setup (portable on x86_64), not
    whatever pip would build natively: a native build can SIGILL on a VM that advertises AMX."""
    venv = installed / "opt/hoosh-edge/venv"
    wheel = subprocess.run([str(ROOT / "scripts/llama-wheel"), str(venv / "bin/python")],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert (venv / ".llama-cpp-build").read_text().strip() == Path(wheel).parent.name
    code = "import llama_cpp; print(llama_cpp.__version__)"
    out = subprocess.run([str(venv / "bin/python"), "-c", code], cwd="/", capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    assert out and out in Path(wheel).name


@pytest.mark.slow
def test_installed_config_has_the_system_paths(installed: Path) -> None:
    py = installed / "opt/hoosh-edge/venv/bin/python"
    config = installed / "etc/hoosh-edge/config.toml"
    code = ("import sys; from hoosh_edge.config import load_config; "
            "c = load_config(sys.argv[1], env={}); print(c.server.data_dir, c.server.models_dir)")  # fmt: skip
    out = subprocess.run([str(py), "-c", code, str(config)], cwd="/", capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    assert out == ["/var/lib/hoosh-edge", "/var/lib/hoosh-edge/models"]
    text = config.read_text()
    assert '\ndata_dir = "/var/lib/hoosh-edge"' in text
    assert '\nmodels_dir = "/var/lib/hoosh-edge/models"' in text


@pytest.mark.slow
def test_installed_cli_knows_the_default_models(installed: Path) -> None:
    """The installed package finds the model manifest: 'smollm2' is a name it can pull."""
    cli = installed / "opt/hoosh-edge/venv/bin/hoosh-edge"
    models = installed / "var/lib/hoosh-edge/models"
    proc = subprocess.run([str(cli), "models", "list", "--models-dir", str(models)], cwd="/",
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in ("smollm2", "whisper-tiny.en", "joe"):
        assert re.search(rf"^{re.escape(name)}\s+\w+\s+absent", proc.stdout, re.M), proc.stdout


@pytest.mark.slow
def test_installed_gateway_serves(installed: Path, tmp_path: Path) -> None:
    """The installed console script starts the real server (no file of the package missing)."""
    cli = installed / "opt/hoosh-edge/venv/bin/hoosh-edge"
    config = tmp_path / "config.toml"
    text = (installed / "etc/hoosh-edge/config.toml").read_text()
    text = text.replace('data_dir = "/var/lib/hoosh-edge"', f'data_dir = "{tmp_path / "data"}"')
    text = text.replace('models_dir = "/var/lib/hoosh-edge/models"',
                        f'models_dir = "{tmp_path / "models"}"')  # fmt: skip
    config.write_text(text)
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(cli), "serve", "--config", str(config), "--port", "0"], cwd="/",
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if "listening on" not in first:
            proc.kill()
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"the installed gateway did not start:\n{first}{out}{err}")
        url = first.strip().rsplit(" ", 1)[-1]
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = requests.get(url + "/health", timeout=2)
                assert resp.status_code == 200, resp.text
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
@pytest.mark.usefixtures("systemd_analyze_path")
def test_installed_unit_verifies_against_the_installed_venv(
    installed: Path, tmp_path: Path
) -> None:
    """The unit's ExecStart, prefixed with the root, is the console script the install made."""
    unit = (installed / "etc/systemd/system/hoosh-edge.service").read_text()
    copy = tmp_path / "hoosh-edge.service"
    copy.write_text(unit.replace(EXEC_START, str(installed) + EXEC_START))
    proc = systemd_verify(copy)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_uninstall_dry_run_changes_nothing(installed: Path) -> None:
    before = tree(installed)
    out = run_install("--root", str(installed), "--uninstall", "--purge", "--dry-run").stdout
    assert "rm -rf" in out
    assert tree(installed) == before


@pytest.mark.slow
def test_uninstall_keeps_config_and_data_and_purge_removes_them(
    installed: Path, tmp_path: Path
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(installed, root, symlinks=True)
    (root / "var/lib/hoosh-edge/hoosh-edge.db").write_text("the operator's spend ledger")

    run_install("--root", str(root), "--uninstall")
    assert not (root / "opt/hoosh-edge").exists()
    assert not (root / "etc/systemd/system/hoosh-edge.service").exists()
    assert "port = 9099  # edited" in (root / "etc/hoosh-edge/config.toml").read_text()
    assert (root / "etc/hoosh-edge/env").exists()
    assert (root / "var/lib/hoosh-edge/hoosh-edge.db").read_text() == "the operator's spend ledger"

    again = run_install("--root", str(root), "--uninstall")  # idempotent too
    assert "not there" in again.stdout

    run_install("--root", str(root), "--uninstall", "--purge")
    assert not (root / "etc/hoosh-edge").exists()
    assert not (root / "var/lib/hoosh-edge").exists()


@pytest.mark.slow
def test_installed_package_has_every_file_of_the_checkout(installed: Path) -> None:
    """Templates, static files and data must be package data, or the service lacks them."""
    py = installed / "opt/hoosh-edge/venv/bin/python"
    code = "import hoosh_edge, os; print(os.path.dirname(hoosh_edge.__file__))"
    pkg = Path(subprocess.run([str(py), "-c", code], cwd="/", capture_output=True, text=True,
                              check=True).stdout.strip())  # fmt: skip
    src = ROOT / "hoosh_edge"
    wanted = sorted(
        str(p.relative_to(src))
        for p in src.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    missing = [rel for rel in wanted if not (pkg / rel).is_file()]
    assert missing == [], f"not in the installed package (add them as package data): {missing}"
