"""Loading: the file (or none) and the environment into a ``Config``; local engines, routing.

Start-up with no file at all is the quick start: 127.0.0.1:8088, local models found in
``models/``, and a cloud provider for each well-known API key in the environment. Every mistake in
a file stops start-up with a message that names the key and the file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from hoosh_edge.config.database import parse_database
from hoosh_edge.config.providers import env_providers, parse_provider
from hoosh_edge.config.schema import (
    PHONEMIZERS,
    Config,
    ConfigError,
    LocalEngineConfig,
    OllamaConfig,
    ProviderConfig,
    RoutingConfig,
    check_keys,
    typed,
)
from hoosh_edge.config.server import parse_server
from hoosh_edge.config.wyoming import parse_wyoming


def _parse_local(t: dict, kind: str, src: str) -> LocalEngineConfig:
    """``[local.llm]``, ``[local.stt]`` or ``[local.tts]``; each kind has keys of its own."""
    where = f"local.{kind}."
    allowed = {"n_threads", "keep_alive_s", "max_queue", "preload", "models"}
    if kind == "llm":
        allowed |= {"n_ctx", "prompt_cache_mb", "prompt_cache_disk_mb"}
    if kind == "stt":
        allowed |= {"max_audio_s"}
    if kind == "tts":
        allowed |= {"default_voice", "voices", "max_input_chars", "phonemizer", "espeak_data"}
        allowed.discard("models")
    if kind == "embeddings":
        allowed |= {"truncate", "runtime"}
    check_keys(t, allowed, where, src)
    table_key = "voices" if kind == "tts" else "models"
    models = typed(t, table_key, dict, where, src, {})
    for mid, path in models.items():
        if not isinstance(path, str):
            raise ConfigError(f"{src}: '{where}{table_key}.{mid}' must be a file path string")
    preload = typed(t, "preload", list, where, src, [])
    d = LocalEngineConfig()
    n_threads = typed(t, "n_threads", int, where, src, 0)
    if n_threads < 0:
        raise ConfigError(f"{src}: '{where}n_threads' must be >= 0 (0 = all cores)")
    max_queue = typed(t, "max_queue", int, where, src, d.max_queue)
    if max_queue < 0:
        raise ConfigError(f"{src}: '{where}max_queue' must be >= 0")
    n_ctx = typed(t, "n_ctx", int, where, src, d.n_ctx)
    if n_ctx < 64:
        raise ConfigError(f"{src}: '{where}n_ctx' must be >= 64")
    max_audio_s = float(typed(t, "max_audio_s", (int, float), where, src, d.max_audio_s))
    if not 0 < max_audio_s <= 86400:
        raise ConfigError(f"{src}: '{where}max_audio_s' must be > 0 and at most 86400 (a day)")
    cache_mb = {}
    for key in ("prompt_cache_mb", "prompt_cache_disk_mb"):
        cache_mb[key] = typed(t, key, int, where, src, getattr(d, key))
        if not 0 <= cache_mb[key] <= 1 << 20:
            raise ConfigError(f"{src}: '{where}{key}' must be between 0 (off) and 1048576 MB")
    max_input_chars = typed(t, "max_input_chars", int, where, src, d.max_input_chars)
    if max_input_chars < 1:
        raise ConfigError(f"{src}: '{where}max_input_chars' must be >= 1")
    phonemizer = typed(t, "phonemizer", str, where, src, d.phonemizer)
    if phonemizer not in PHONEMIZERS:
        raise ConfigError(
            f"{src}: '{where}phonemizer' must be one of {', '.join(PHONEMIZERS)}, not {phonemizer!r}"
        )
    espeak_data = typed(t, "espeak_data", str, where, src, None)
    if espeak_data is not None and not espeak_data.strip():
        raise ConfigError(f"{src}: '{where}espeak_data' must be a folder path (or left out)")
    return LocalEngineConfig(
        n_threads=n_threads,
        n_ctx=n_ctx,
        keep_alive_s=float(typed(t, "keep_alive_s", (int, float), where, src, d.keep_alive_s)),
        max_queue=max_queue,
        preload=tuple(str(p) for p in preload),
        models=tuple(models.items()),
        default_voice=typed(t, "default_voice", str, where, src, None),
        max_audio_s=max_audio_s,
        max_input_chars=max_input_chars,
        **cache_mb,
        phonemizer=phonemizer,
        espeak_data=espeak_data,
        truncate=typed(t, "truncate", bool, where, src, d.truncate),
        runtime=_embed_runtime(t, where, src),
    )


def _embed_runtime(t: dict, where: str, src: str) -> str:
    runtime = typed(t, "runtime", str, where, src, "auto")
    if runtime not in ("auto", "onnxruntime", "numpy"):
        raise ConfigError(f"{src}: '{where}runtime' must be auto, onnxruntime or numpy")
    return runtime


def _parse_routing(t: dict, src: str, providers: list[ProviderConfig]) -> RoutingConfig:
    """``[routing]``; every alias target must name a configured provider (or ``local``)."""
    check_keys(
        t, {"aliases", "strategy", "prefer_cloud_when", "breaker_cooldown_s"}, "routing.", src
    )
    cooldown = float(typed(t, "breaker_cooldown_s", (int, float), "routing.", src, 30.0))
    if cooldown <= 0:
        raise ConfigError(f"{src}: 'routing.breaker_cooldown_s' must be > 0")
    when = typed(t, "prefer_cloud_when", dict, "routing.", src, {})
    check_keys(
        when, {"cpu_temp_c", "free_ram_mb", "queue_depth"}, "routing.prefer_cloud_when.", src
    )
    w = "routing.prefer_cloud_when."
    temp = typed(when, "cpu_temp_c", (int, float), w, src, None)
    free = typed(when, "free_ram_mb", int, w, src, None)
    depth = typed(when, "queue_depth", int, w, src, None)
    strategy = typed(t, "strategy", str, "routing.", src, "priority")
    if strategy not in ("priority", "round_robin", "lowest_latency"):
        raise ConfigError(
            f"{src}: 'routing.strategy' must be priority, round_robin or lowest_latency"
        )
    aliases = []
    for alias, targets in typed(t, "aliases", dict, "routing.", src, {}).items():
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not all(isinstance(x, str) for x in targets):
            raise ConfigError(f"{src}: 'routing.aliases.{alias}' must be a list of targets")
        for target in targets:
            if ":" not in target:
                raise ConfigError(
                    f"{src}: 'routing.aliases.{alias}' target {target!r} must be "
                    "'provider:model' (or 'local:model')"
                )
            pname = target.split(":", 1)[0]
            if pname != "local" and not any(p.name == pname for p in providers):
                raise ConfigError(
                    f"{src}: 'routing.aliases.{alias}' names provider {pname!r}, which is not "
                    "configured"
                )
        aliases.append((alias, tuple(targets)))
    return RoutingConfig(
        aliases=tuple(aliases),
        strategy=strategy,
        prefer_cloud_cpu_temp_c=None if temp is None else float(temp),
        prefer_cloud_free_ram_mb=free,
        prefer_cloud_queue_depth=depth,
        breaker_cooldown_s=cooldown,
    )


_TOP_KEYS = {"server", "providers", "local", "routing", "budgets", "pricing", "cache", "timezone",
             "ollama", "wyoming", "database"}  # fmt: skip


def _parse_ollama(t: dict, src: str, main_port: int) -> OllamaConfig:
    """``[ollama]``: an optional second listener for clients that only know port 11434."""
    check_keys(t, {"port"}, "ollama.", src)
    port = typed(t, "port", int, "ollama.", src, None)
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{src}: 'ollama.port' must be between 1 and 65535 (or left out)")
    if port is not None and port == main_port:
        raise ConfigError(f"{src}: 'ollama.port' {port} is server.port already: Ollama's API is "
                          "served there anyway; leave ollama.port out")  # fmt: skip
    return OllamaConfig(port=port)


def load_config(
    path: str | os.PathLike | None = None,
    *,
    env: dict[str, str] | None = None,
    host: str | None = None,
    port: int | None = None,
) -> Config:
    """Read the config file (or none) and the environment; raise ConfigError when invalid."""
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get("HOOSH_EDGE_CONFIG") or None
    raw: dict[str, Any] = {}
    src = "(defaults)"
    if path is not None:
        src = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{src}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{src}: not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{src}: cannot read: {e}") from None
    return parse_config(raw, src=src, env=env, host=host, port=port)


def parse_config(
    raw: dict[str, Any],
    *,
    src: str = "(config)",
    env: dict[str, str] | None = None,
    host: str | None = None,
    port: int | None = None,
) -> Config:
    """Validate a parsed TOML document into a Config."""
    env = dict(os.environ if env is None else env)
    check_keys(raw, _TOP_KEYS, "", src)
    warnings: list[str] = []
    server = parse_server(typed(raw, "server", dict, "", src, {}), src, env, warnings)
    if host is not None or port is not None:
        server = dataclasses.replace(
            server,
            host=host if host is not None else server.host,
            port=port if port is not None else server.port,
        )
    if "providers" in raw:
        plist = typed(raw, "providers", list, "", src, [])
        providers = [parse_provider(p, i, src, env, warnings) for i, p in enumerate(plist)]
    else:
        providers = env_providers(env)
    names = [p.name for p in providers]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"{src}: provider name(s) used twice: {', '.join(sorted(dupes))}")
    if "local" in names:
        raise ConfigError(f"{src}: 'local' is reserved for on-device models; rename the provider")
    local = typed(raw, "local", dict, "", src, {})
    check_keys(local, {"llm", "stt", "tts", "embeddings"}, "local.", src)
    budgets = typed(raw, "budgets", list, "", src, [])
    for i, b in enumerate(budgets):
        if not isinstance(b, dict):
            raise ConfigError(f"{src}: 'budgets[{i}]' must be a table ([[budgets]])")
    pricing = typed(raw, "pricing", dict, "", src, {})
    for model, table in pricing.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{src}: 'pricing.\"{model}\"' must be a table")
    tz = typed(raw, "timezone", str, "", src, "UTC")
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(tz)
    except Exception:  # noqa: BLE001 - any failure means the name is unusable
        raise ConfigError(f"{src}: 'timezone' {tz!r} is not a known IANA time zone") from None
    return Config(
        server=server,
        providers=tuple(providers),
        llm=_parse_local(typed(local, "llm", dict, "local.", src, {}), "llm", src),
        stt=_parse_local(typed(local, "stt", dict, "local.", src, {}), "stt", src),
        tts=_parse_local(typed(local, "tts", dict, "local.", src, {}), "tts", src),
        embeddings=_parse_local(
            typed(local, "embeddings", dict, "local.", src, {}), "embeddings", src
        ),  # fmt: skip
        routing=_parse_routing(typed(raw, "routing", dict, "", src, {}), src, providers),
        ollama=_parse_ollama(typed(raw, "ollama", dict, "", src, {}), src, server.port),
        wyoming=parse_wyoming(typed(raw, "wyoming", dict, "", src, {}), src),
        budgets=tuple(budgets),
        pricing=tuple(pricing.items()),
        cache=tuple(typed(raw, "cache", dict, "", src, {}).items()),
        timezone=tz,
        database=parse_database(typed(raw, "database", dict, "", src, {}), src, env),
        source=None if src == "(defaults)" else src,
        warnings=tuple(warnings),
    )
