"""The ``hoosh-edge`` command, run as the operator runs it, beside a real gateway on the same data."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import soundfile as sf

from tests.conftest import ROOT, GatewayProcess, openai_provider_toml
from tests.fake_openai import FakeOpenAI

ADMIN_KEY = "cli-admin-key-5f1e0c7d9a2b4e6f"
KEY_RE = re.compile(r"hk-[A-Za-z0-9_-]{43}")

PRICED = """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 10
output_usd_per_mtok = 100
"""


def cli_env() -> dict[str, str]:
    """The environment without cloud keys or a default gateway key or config."""
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and k != "HOOSH_EDGE_CONFIG"}  # fmt: skip
    env["PYTHONUNBUFFERED"] = "1"
    # The checkout under test, not whichever copy an editable install points at.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def hoosh(*args: str, config: Path, cwd: Path | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess:  # fmt: skip
    """``hoosh-edge ARGS --config CONFIG`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "hoosh_edge", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=timeout, env=cli_env(),
        cwd=cwd or config.parent,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory) -> Iterator[GatewayProcess]:
    """A gateway whose config (and so whose database) the CLI uses too."""
    d = tmp_path_factory.mktemp("cli")
    cfg = f"""
[server]
data_dir = "{d / 'state'}"
admin_key = "{ADMIN_KEY}"
""" + openai_provider_toml(fake) + PRICED  # fmt: skip
    with GatewayProcess(cfg, d) as proc:
        yield proc


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def chat(gw: GatewayProcess, key: str, content: str = "hi", **extra) -> requests.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}],
            "max_tokens": 5, **extra}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip


# -- keys ---------------------------------------------------------------------------------------


def test_help_lists_every_subcommand(tmp_path):
    """``hoosh-edge --help`` is the map of the whole command, not serve's options."""
    for flag in ("--help", "-h"):
        out = subprocess.run([sys.executable, "-m", "hoosh_edge", flag], capture_output=True,
                             text=True, timeout=60, env=cli_env(), cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr
        listed = re.findall(r"^\s{4}(\w+)", out.stdout, re.M)
        assert listed == ["serve", "models", "keys", "budget", "cache", "status", "chat",
                          "transcribe", "speak", "doctor"], out.stdout  # fmt: skip
        assert "--port" not in out.stdout  # serve's own options live under `serve -h`
    serve = subprocess.run([sys.executable, "-m", "hoosh_edge", "serve", "-h"],
                           capture_output=True, text=True, timeout=60, env=cli_env(), cwd=tmp_path)  # fmt: skip
    assert serve.returncode == 0 and "--port" in serve.stdout


def test_keys_create_list_revoke(gw):
    made = hoosh("keys", "create", "laptop", "--rpm", "100", config=gw.config_path)
    assert made.returncode == 0, made.stderr
    keys = KEY_RE.findall(made.stdout)
    assert len(keys) == 1, made.stdout  # shown exactly once
    key = keys[0]
    assert "only this once" in made.stdout
    # The running gateway takes the new key on its next request.
    r = chat(gw, key, content="from laptop")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: from laptop"

    listed = hoosh("keys", "list", config=gw.config_path)
    assert listed.returncode == 0, listed.stderr
    assert "laptop" in listed.stdout and key[:11] in listed.stdout  # the prefix, to recognise it
    assert key not in listed.stdout and not KEY_RE.search(listed.stdout)
    row = next(line for line in listed.stdout.splitlines() if line.startswith("laptop"))
    assert "100" in row.split()  # its rpm

    gone = hoosh("keys", "revoke", "laptop", config=gw.config_path)
    assert gone.returncode == 0 and "Revoked key 'laptop'" in gone.stdout
    r = chat(gw, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    again = hoosh("keys", "revoke", "laptop", config=gw.config_path)
    assert again.returncode == 1 and "No active key named 'laptop'" in again.stderr


def test_keys_create_refuses_a_bad_name_cleanly(gw):
    bad = hoosh("keys", "create", "no spaces allowed", config=gw.config_path)
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    assert bad.stderr.startswith("hoosh-edge: ") and "Traceback" not in bad.stderr
    assert not KEY_RE.search(bad.stdout)


# -- budget -------------------------------------------------------------------------------------


def budget_rules(gw: GatewayProcess) -> dict[str, dict]:
    r = requests.get(gw.url + "/admin/budgets", headers=admin(), timeout=5)
    assert r.status_code == 200, r.text
    return {b["name"]: b for b in r.json()["data"]}


def test_budget_set_list_rm_is_seen_live_by_the_gateway(gw):
    made = hoosh("budget", "set", "daily", "--scope", "cloud", "--limit", "0.50", "--period",
                 "day", config=gw.config_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "Created budget rule 'daily'" in made.stdout
    listed = hoosh("budget", "list", config=gw.config_path)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("daily"))
    cells = row.split()
    assert cells[:3] == ["daily", "cloud", "usd"] and Decimal(cells[3]) == Decimal("0.50"), row
    assert "day" in cells and "block" in cells
    live = budget_rules(gw)["daily"]
    assert (live["scope"], Decimal(live["limit"]), live["period"]) == (
        "cloud",
        Decimal("0.5"),
        "day",
    )
    assert chat(gw, ADMIN_KEY, content="within budget").status_code == 200

    # Lower it below one answer's worst case: the gateway refuses on its next request.
    lowered = hoosh("budget", "set", "daily", "--limit", "0.000001", config=gw.config_path)
    assert lowered.returncode == 0 and "Updated budget rule 'daily'" in lowered.stdout
    r = chat(gw, ADMIN_KEY, content="over budget")
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded" and "daily" in err["message"]

    removed = hoosh("budget", "rm", "daily", config=gw.config_path)
    assert removed.returncode == 0 and "Removed budget rule 'daily'" in removed.stdout
    assert "daily" not in budget_rules(gw)
    assert chat(gw, ADMIN_KEY, content="no rule now").status_code == 200
    listed = hoosh("budget", "list", config=gw.config_path)
    assert "daily" not in listed.stdout


def test_budget_rm_of_an_unknown_rule_fails_cleanly(gw):
    out = hoosh("budget", "rm", "nosuchrule", config=gw.config_path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "nosuchrule" in out.stderr and "Traceback" not in out.stderr


def test_budget_correct_books_exact_usd_and_refuses_what_it_cannot(gw):
    """``budget correct --usd`` parses like every other USD amount: exact, or a clean refusal."""
    resp = chat(gw, ADMIN_KEY, content="to be corrected")
    assert resp.status_code == 200
    rid = resp.headers["X-Request-Id"]
    for usd, says in (("0.0000001", "6 decimal places"), ("-1", ">= 0"), ("sNaN", "finite"),
                      ("1e999999999", "too large"), ("9223372036854.775808", "too large"),
                      ("1_000", "not a number")):  # fmt: skip
        out = hoosh("budget", "correct", rid, "--usd", usd, "--reason", "r", config=gw.config_path)
        assert out.returncode == 1, (usd, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and "usd" in out.stderr and says in out.stderr, usd
    out = hoosh("budget", "correct", rid, "--usd", "0.123456", "--reason", "invoice",
                config=gw.config_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "-> 0.123456 USD" in out.stdout and "invoice" in out.stdout
    again = hoosh(
        "budget", "correct", rid, "--usd", "0", "--reason", "refund", config=gw.config_path
    )
    assert "0.123456 -> 0 USD" in again.stdout and "-0.123456" in again.stdout  # a negative delta


def test_budget_usage_shows_the_spend_of_the_gateway(gw):
    for i in range(2):
        assert chat(gw, ADMIN_KEY, content=f"paid {i}").status_code == 200
    out = hoosh("budget", "usage", "--period", "day", config=gw.config_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = lines[0].split()
    assert header[:2] == ["provider", "requests"] and "cost_usd" in header and "orphaned" in header
    row = dict(zip(header, next(line.split() for line in lines[1:] if line.startswith("fake")),
                   strict=True))  # fmt: skip
    assert int(row["requests"]) >= 2
    assert float(row["cost_usd"]) > 0  # what it cost, from the price table
    assert int(row["orphaned"]) == 0  # nothing was left in flight by a crash
    by_key = hoosh("budget", "usage", "--group-by", "key", config=gw.config_path)
    assert by_key.returncode == 0 and "admin" in by_key.stdout


# -- cache --------------------------------------------------------------------------------------


def test_cache_stats_and_clear(gw):
    # temperature 0 makes an answer cacheable.
    first = chat(gw, ADMIN_KEY, content="cache me", temperature=0)
    assert first.headers["X-Hoosh-Cache"] == "MISS"
    assert chat(gw, ADMIN_KEY, content="cache me", temperature=0).headers["X-Hoosh-Cache"] == "HIT"
    stats = hoosh("cache", "stats", config=gw.config_path)
    assert stats.returncode == 0, stats.stderr
    fields = dict(line.split(None, 1) for line in stats.stdout.splitlines()[:7])
    assert fields["enabled"] == "True" and int(fields["entries"]) >= 1
    assert int(fields["bytes"]) > 0
    cleared = hoosh("cache", "clear", config=gw.config_path)
    assert cleared.returncode == 0, cleared.stderr
    n = int(re.search(r"Removed (\d+) cached answer", cleared.stdout).group(1))
    assert n >= 1
    after = hoosh("cache", "stats", config=gw.config_path)
    assert re.search(r"^entries\s+0$", after.stdout, re.M), after.stdout
    assert chat(gw, ADMIN_KEY, content="cache me", temperature=0).headers["X-Hoosh-Cache"] == "MISS"


# -- talking to a running gateway ---------------------------------------------------------------


def test_status_of_a_running_gateway(gw):
    out = hoosh("status", "--server", gw.url, config=gw.config_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"gateway {gw.url}: ok")
    assert re.search(r"^\s+provider fake\s+\S+", out.stdout, re.M), out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_without_a_gateway_is_a_clear_error(gw):
    url = f"http://127.0.0.1:{free_port()}"
    out = hoosh("status", "--server", url, config=gw.config_path)
    assert out.returncode == 1
    assert f"No gateway answers at {url}" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_chat_prints_the_streamed_answer(gw, fake):
    before = len(fake.chat_requests)
    out = hoosh("chat", "--server", gw.url, "--api-key", ADMIN_KEY, "-m", "gpt-4o-mini",
                "hello", "from", "the", "shell", config=gw.config_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Echo: hello from the shell\n"
    sent = fake.chat_requests[before:]
    assert len(sent) == 1 and sent[0]["json"]["stream"] is True


def test_chat_without_a_key_says_why(gw):
    out = hoosh("chat", "--server", gw.url, "-m", "gpt-4o-mini", "hi", config=gw.config_path)
    assert out.returncode == 1
    assert "Missing API key" in out.stderr and "Traceback" not in out.stderr


def test_doctor_reports_in_readable_lines(gw):
    out = hoosh("doctor", config=gw.config_path)
    assert out.returncode in (0, 1), out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("[ok] Python ") for line in lines)
    assert any(str(gw.config_path) in line and "is valid" in line for line in lines)
    for line in lines[:-1]:
        assert re.match(r"^(\[(ok|!!|--)\] |     fix: )", line), line
    if out.returncode == 0:
        assert lines[-1] == "All good."
    else:
        problems = sum(line.startswith("[!!]") for line in lines)
        assert lines[-1] == f"{problems} problem(s) found."


@pytest.mark.parametrize("text,named", [
    ("[server]\nport = \"eighty\"\n", "server.port"),
    ("[server]\nprot = 8080\n", "server.prot"),
    ("[server\nport = 1\n", None),
    ("[server]\ninference_threads = 0\n", "server.inference_threads"),
    ("[server]\nstuck_job_s = -5\n", "server.stuck_job_s"),
])  # fmt: skip
def test_an_invalid_config_exits_2_naming_the_key_and_the_file(tmp_path, text, named):
    cfg = tmp_path / "broken.toml"
    cfg.write_text(text)
    for args in (["keys", "list"], ["budget", "list"], ["doctor"], ["serve", "--port", "0"]):
        out = hoosh(*args, config=cfg)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "invalid configuration" in out.stderr and str(cfg) in out.stderr, out.stderr
        if named:
            assert named in out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()  # nothing was created on the way


# -- speech through the gateway -----------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_gw(tmp_path_factory) -> Iterator[GatewayProcess]:
    from tests.synth_piper import make_voice
    from tests.synth_whisper import make_synthetic_whisper

    d = tmp_path_factory.mktemp("cli-speech")
    voice = make_voice(str(d), name="tiny")
    whisper = make_synthetic_whisper(d / "ggml-synth.bin")
    cfg = f"""
[server]
data_dir = "{d / "state"}"
[local.stt.models]
synth = "{whisper}"
[local.tts]
default_voice = "tiny"
[local.tts.voices]
tiny = "{voice}"
"""
    with GatewayProcess(cfg, d) as proc:
        yield proc


def test_speak_then_transcribe(speech_gw, tmp_path):
    wav = tmp_path / "hello.wav"
    out = hoosh("speak", "--server", speech_gw.url, "-o", str(wav), "Hello", "there.",
                config=speech_gw.config_path, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"Wrote {wav}" in out.stdout and "wav" in out.stdout
    info = sf.info(str(wav))
    assert info.frames > 0 and info.samplerate > 0
    assert wav.read_bytes().startswith(b"RIFF")

    flac = tmp_path / "hello.flac"
    out = hoosh("speak", "--server", speech_gw.url, "-o", str(flac), "Hi.",
                config=speech_gw.config_path, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert flac.read_bytes().startswith(b"fLaC")  # the format follows the file name

    text = hoosh("transcribe", "--server", speech_gw.url, str(wav),
                 config=speech_gw.config_path)  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert text.stdout.endswith("\n")  # the synthetic model's words, whatever they are
    vtt = hoosh("transcribe", "--server", speech_gw.url, "--format", "vtt", str(wav),
                config=speech_gw.config_path)  # fmt: skip
    assert vtt.returncode == 0, vtt.stderr
    assert vtt.stdout.startswith("WEBVTT")


def test_transcribe_of_a_non_audio_file_says_why(speech_gw, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not audio " * 20)
    out = hoosh("transcribe", "--server", speech_gw.url, str(junk), config=speech_gw.config_path)
    assert out.returncode == 1
    assert out.stderr.strip() and "Traceback" not in out.stderr
