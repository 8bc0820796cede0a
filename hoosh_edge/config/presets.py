"""Built-in provider presets: a ``type`` in config that needs no base_url.

``wire`` is the protocol spoken: every preset but Anthropic speaks the OpenAI chat API.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    wire: str  # "openai" | "anthropic"
    base_url: str | None
    models: tuple[str, ...]
    needs_key: bool = True
    api_version: str | None = None


ANTHROPIC_API_VERSION = "2023-06-01"

PRESETS: dict[str, Preset] = {
    # base_url None: the config must give one.
    "openai": Preset(
        "openai",
        "https://api.openai.com/v1",
        ("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*", "whisper-1", "tts-1*"),
        needs_key=False,  # a generic OpenAI-compatible server may take no key
    ),
    "anthropic": Preset(
        "anthropic", "https://api.anthropic.com/v1", ("claude-*",),
        api_version=ANTHROPIC_API_VERSION,
    ),
    "groq": Preset(
        "openai", "https://api.groq.com/openai/v1",
        ("llama-*", "llama3-*", "meta-llama/*", "gemma*", "qwen*", "mixtral-*", "openai/gpt-oss-*",
         "deepseek-r1-distill-*", "moonshotai/*", "whisper-large-v3*"),
    ),
    "mistral": Preset(
        "openai", "https://api.mistral.ai/v1",
        ("mistral-*", "open-mistral-*", "codestral-*", "ministral-*", "pixtral-*", "magistral-*",
         "devstral-*"),
    ),
    "deepseek": Preset("openai", "https://api.deepseek.com/v1", ("deepseek-*",)),
    "openrouter": Preset("openai", "https://openrouter.ai/api/v1", ("*/*",)),
    "xai": Preset("openai", "https://api.x.ai/v1", ("grok-*",)),
    # Servers on the LAN or the box itself: no key needed, serve whatever they have.
    "ollama": Preset("openai", "http://127.0.0.1:11434/v1", ("*",), needs_key=False),
    "lmstudio": Preset("openai", "http://127.0.0.1:1234/v1", ("*",), needs_key=False),
    "llamacpp-server": Preset("openai", "http://127.0.0.1:8080/v1", ("*",), needs_key=False),
    "localai": Preset("openai", "http://127.0.0.1:8080/v1", ("*",), needs_key=False),
}  # fmt: skip

# Environment variables that enable a provider when no config file lists providers.
ENV_PROVIDERS: tuple[tuple[str, str], ...] = (
    ("openai", "OPENAI_API_KEY"),
    ("anthropic", "ANTHROPIC_API_KEY"),
    ("groq", "GROQ_API_KEY"),
    ("mistral", "MISTRAL_API_KEY"),
    ("deepseek", "DEEPSEEK_API_KEY"),
    ("openrouter", "OPENROUTER_API_KEY"),
    ("xai", "XAI_API_KEY"),
)
