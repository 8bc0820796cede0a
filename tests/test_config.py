"""The config: every section's values, secrets from the environment, and errors naming key and file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hoosh_edge.config import ConfigError, load_config, parse_config
from hoosh_edge.config.presets import ANTHROPIC_API_VERSION, PRESETS

BAD = [
    ({"server": {"port": "eighty"}}, "'server.port' must be int, got 'eighty'"),
    ({"server": {"port": 70000}}, "'server.port' must be 0-65535"),
    ({"server": {"prot": 1}}, "unknown key 'server.prot' (allowed: admin_key,"),
    ({"server": {"durability": "fast"}}, '\'server.durability\' must be "full" or "normal"'),
    ({"server": {"api_keys": ["a", 3]}}, "'server.api_keys[1]' must be a string"),
    ({"server": {"allow_unauthenticated": 1}}, "'server.allow_unauthenticated' must be bool"),
    ({"server": {"loopback_reserve": -1}}, "'server.loopback_reserve' must be >= 0, got -1"),
    ({"server": {"allowed_hosts": [""]}}, "'server.allowed_hosts' must be a list of non-empty"),
    ({"providers": [{"name": "x"}]}, "'providers[0].type' is required"),
    ({"providers": [{"type": "nope"}]}, "'providers[0].type' is 'nope'; known types: anthropic,"),
    ({"providers": [{"type": "openai", "name": "a b"}]}, "'providers[0].name' 'a b' may hold"),
    ({"providers": [{"type": "openai", "base_url": "ftp://x"}]}, "'providers[0].base_url' must"),
    (
        {"providers": [{"type": "openai", "base_url": ""}]},
        "'providers[0].base_url' is required for type",
    ),
    ({"providers": [{"type": "openai", "headers": {"X": 1}}]}, "'providers[0].headers.X' must"),
    ({"providers": [{"type": "openai", "timeout_s": 0}]}, "'providers[0].timeout_s' must be > 0"),
    (
        {"providers": [{"type": "ollama"}, {"type": "openai", "foo": 1}]},
        "unknown key 'providers[1].foo'",
    ),
    ({"providers": ["x"]}, "'providers[0]' must be a table ([[providers]])"),
    ({"providers": [{"type": "groq"}, {"type": "groq"}]}, "provider name(s) used twice: groq"),
    ({"providers": [{"type": "openai", "name": "local"}]}, "'local' is reserved"),
    ({"local": {"gpu": {}}}, "unknown key 'local.gpu' (allowed: embeddings, llm, stt, tts)"),
    ({"local": {"llm": {"n_ctx": 10}}}, "'local.llm.n_ctx' must be >= 64"),
    ({"local": {"llm": {"models": {"a": 1}}}}, "'local.llm.models.a' must be a file path string"),
    ({"local": {"tts": {"models": {}}}}, "unknown key 'local.tts.models'"),
    ({"routing": {"strategy": "fastest"}}, "'routing.strategy' must be priority, round_robin"),
    ({"routing": {"aliases": {"x": "nocolon"}}}, "'routing.aliases.x' target 'nocolon' must be"),
    (
        {"routing": {"aliases": {"x": ["ghost:m"]}}},
        "names provider 'ghost', which is not configured",
    ),
    ({"routing": {"prefer_cloud_when": {"cpu": 1}}}, "unknown key 'routing.prefer_cloud_when.cpu'"),
    ({"budgets": [3]}, "'budgets[0]' must be a table ([[budgets]])"),
    ({"pricing": {"gpt-4.1": 3}}, "'pricing.\"gpt-4.1\"' must be a table"),
    ({"timezone": "Mars/Base"}, "'timezone' 'Mars/Base' is not a known IANA time zone"),
    ({"nope": 1}, "unknown key 'nope' (allowed: budgets, cache, database, local,"),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[re.sub(r"\W+", "-", m)[:40] for _, m in BAD])
def test_each_mistake_names_the_file_and_the_key(raw, message) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, src="edge.toml", env={})
    assert str(e.value).startswith("edge.toml: ") and message in str(e.value), str(e.value)


def test_a_full_file_is_read_with_its_presets_and_secrets() -> None:
    raw = {
        "server": {"api_keys": ["$K", "literal", "$UNSET_K"], "admin_key": "${ADM}", "port": 9,
                   "cors_origins": ["http://box.lan:3000/"], "allowed_hosts": [" Box.Lan "]},
        "providers": [{"type": "anthropic", "api_key": "$AK"}, {"type": "groq"},
                      {"type": "openai", "name": "lan", "base_url": "http://127.0.0.1:1/v1/",
                       "models": ["*"], "headers": {"b": "2", "a": "1"}, "timeout_s": 5}],
        "local": {"llm": {"n_ctx": 128, "models": {"m": "m.gguf"}, "keep_alive_s": 5},
                  "stt": {"max_audio_s": 90}, "tts": {"voices": {"v": "v.onnx"}}},
        "routing": {"aliases": {"fast": "local:m", "both": ["lan:x", "local:m"]},
                    "prefer_cloud_when": {"cpu_temp_c": 70}},
        "timezone": "Europe/Berlin",
    }  # fmt: skip
    cfg = parse_config(raw, src="edge.toml", env={"K": "k1", "ADM": "adm", "AK": "ak"})
    s = cfg.server
    assert (s.api_keys, s.admin_key, s.port) == (("k1", "literal"), "adm", 9)
    assert s.cors_origins == ("http://box.lan:3000",) and s.allowed_hosts == ("box.lan",)
    anthropic, groq, lan = cfg.providers
    assert (anthropic.type, anthropic.api_key, anthropic.api_version) == (
        "anthropic", "ak", ANTHROPIC_API_VERSION)  # fmt: skip
    assert (
        groq.base_url == PRESETS["groq"].base_url
        and groq.disabled_reason == "no api_key configured"
    )
    assert (lan.base_url, lan.headers, lan.timeout_s) == ("http://127.0.0.1:1/v1", (("a", "1"), ("b", "2")), 5.0)  # fmt: skip
    assert lan.enabled and lan.serves("anything")
    assert cfg.llm.models == (("m", "m.gguf"),) and cfg.llm.keep_alive_s == 5.0
    assert cfg.stt.max_audio_s == 90.0 and cfg.tts.models == (("v", "v.onnx"),)
    assert cfg.routing.aliases == (("fast", ("local:m",)), ("both", ("lan:x", "local:m")))
    assert cfg.routing.prefer_cloud_cpu_temp_c == 70.0 and cfg.timezone == "Europe/Berlin"
    assert cfg.source == "edge.toml"
    assert cfg.warnings == ("server.api_keys[2]: environment variable $UNSET_K is not set",
                            "provider 'groq': no api_key; the provider is disabled")  # fmt: skip


def test_no_file_serves_the_environments_keys_on_loopback() -> None:
    env = {"GROQ_API_KEY": "g", "ANTHROPIC_API_KEY": "a", "ANTHROPIC_API_VERSION": "2030-01-01"}
    cfg = load_config(None, env=env)
    assert (cfg.server.host, cfg.server.port, cfg.source) == ("127.0.0.1", 8088, None)
    by_name = {p.name: p for p in cfg.providers}
    assert set(by_name) == {"groq", "anthropic"} and by_name["groq"].api_key == "g"
    assert by_name["anthropic"].api_version == "2030-01-01"
    assert load_config(None, env={}, port=0).providers == ()


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: config file not found")):
        load_config(missing, env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match=re.escape(f"{broken}: not valid TOML")):
        load_config(broken, env={})
    chosen = tmp_path / "chosen.toml"
    chosen.write_text("[server]\nport = 9999\n")
    assert load_config(env={"HOOSH_EDGE_CONFIG": str(chosen)}).server.port == 9999
