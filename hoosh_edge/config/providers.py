"""``[[providers]]`` tables, and the providers the environment's API keys bring without one."""

from __future__ import annotations

import re

from hoosh_edge.config.presets import ENV_PROVIDERS, PRESETS
from hoosh_edge.config.schema import ConfigError, ProviderConfig, check_keys, expand_secret, typed

_PROVIDER_KEYS = {
    "name", "type", "base_url", "api_key", "models", "timeout_s", "connect_timeout_s",
    "max_retries", "retry_max_s", "api_version", "max_tokens_limit", "headers", "responses_api",
}  # fmt: skip


def parse_provider(
    t: dict, i: int, src: str, env: dict[str, str], warnings: list[str]
) -> ProviderConfig:
    """A ``[[providers]]`` table over its preset; a missing secret disables it, with a warning."""
    where = f"providers[{i}]."
    if not isinstance(t, dict):
        raise ConfigError(f"{src}: 'providers[{i}]' must be a table ([[providers]])")
    check_keys(t, _PROVIDER_KEYS, where, src)
    ptype = typed(t, "type", str, where, src, None)
    if ptype is None:
        raise ConfigError(f"{src}: '{where}type' is required (openai, anthropic or a preset)")
    if ptype not in PRESETS:
        raise ConfigError(
            f"{src}: '{where}type' is {ptype!r}; known types: {', '.join(sorted(PRESETS))}"
        )
    preset = PRESETS[ptype]
    name = typed(t, "name", str, where, src, ptype)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"{src}: '{where}name' {name!r} may hold only letters, digits, _ . -")
    base_url = typed(t, "base_url", str, where, src, preset.base_url)
    if not base_url:
        raise ConfigError(f"{src}: '{where}base_url' is required for type {ptype!r}")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{src}: '{where}base_url' must start with http:// or https://")
    models = typed(t, "models", list, where, src, list(preset.models))
    if not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{src}: '{where}models' must be a list of model names or globs")
    raw_key = typed(t, "api_key", str, where, src, None)
    api_key, missing = expand_secret(raw_key, env)
    disabled = None
    if missing:
        disabled = f"environment variable ${missing} is not set"
        warnings.append(f"provider '{name}': api_key refers to ${missing}, which is not set; "
                        "the provider is disabled")  # fmt: skip
    elif preset.needs_key and not api_key:
        disabled = "no api_key configured"
        warnings.append(f"provider '{name}': no api_key; the provider is disabled")
    api_version = typed(t, "api_version", str, where, src, None)
    if ptype == "anthropic" and api_version is None:
        api_version = env.get("ANTHROPIC_API_VERSION") or preset.api_version
    headers = typed(t, "headers", dict, where, src, {})
    for hk, hv in headers.items():
        if not isinstance(hv, str):
            raise ConfigError(f"{src}: '{where}headers.{hk}' must be a string")
    max_tokens_limit = typed(t, "max_tokens_limit", int, where, src, None)
    if max_tokens_limit is not None and max_tokens_limit < 1:
        raise ConfigError(f"{src}: '{where}max_tokens_limit' must be >= 1")
    # OpenAI's own API has /v1/responses; an OpenAI-compatible server says so itself.
    own = ptype == "openai" and base_url.rstrip("/") == (preset.base_url or "").rstrip("/")
    responses_api = typed(t, "responses_api", bool, where, src, own)
    if responses_api and preset.wire != "openai":
        raise ConfigError(f"{src}: '{where}responses_api' needs an OpenAI-compatible type")
    timeout_s = float(typed(t, "timeout_s", (int, float), where, src, 60.0))
    if timeout_s <= 0:
        raise ConfigError(f"{src}: '{where}timeout_s' must be > 0")
    return ProviderConfig(
        name=name,
        type=preset.wire,
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        models=tuple(models),
        timeout_s=timeout_s,
        connect_timeout_s=float(typed(t, "connect_timeout_s", (int, float), where, src, 5.0)),
        max_retries=typed(t, "max_retries", int, where, src, 2),
        retry_max_s=float(typed(t, "retry_max_s", (int, float), where, src, 30.0)),
        api_version=api_version,
        max_tokens_limit=max_tokens_limit,
        headers=tuple(sorted(headers.items())),
        disabled_reason=disabled,
        responses_api=responses_api,
    )


def env_providers(env: dict[str, str]) -> list[ProviderConfig]:
    """A provider for each well-known API key present in the environment."""
    out = []
    for ptype, var in ENV_PROVIDERS:
        key = env.get(var)
        if not key:
            continue
        preset = PRESETS[ptype]
        api_version = None
        if ptype == "anthropic":
            api_version = env.get("ANTHROPIC_API_VERSION") or preset.api_version
        out.append(
            ProviderConfig(
                name=ptype,
                type=preset.wire,
                base_url=preset.base_url,
                api_key=key,
                models=preset.models,
                api_version=api_version,
                responses_api=ptype == "openai",
            )
        )
    return out
