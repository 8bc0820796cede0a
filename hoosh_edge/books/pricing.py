"""The bundled offline price table, with overrides from the config file.

Prices are USD per million tokens (input / output), per audio minute (transcription) or per million
characters (speech). They ship with the code so nothing is fetched at start-up; an operator fixes a
stale or missing one in the config:

    [pricing."gpt-4o-mini"]
    input_usd_per_mtok = "0.15"
    output_usd_per_mtok = "0.60"
    max_output_tokens = 16384    # the longest answer: caps what a budgeted call may write
    max_image_tokens = 48169     # the most one image can cost; unknown refuses images under usd

An override key is a model name (any provider; dated variants included) or ``PROVIDER/MODEL``
for one provider's model, which is also how routers such as OpenRouter name models.

A USD price per million tokens is, conveniently, exactly micro-dollars per token, so costs are
computed in ``Decimal`` and rounded up once, to the whole micro-dollar: a cost is never undercounted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from hoosh_edge.books.money import parse_decimal
from hoosh_edge.errors import InvalidRequest

PRICE_FIELDS = (
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "usd_per_audio_minute",
    "usd_per_mchars",
)
# Whole-number limits in the same table: the longest answer the model can write, and the most
# prompt tokens one image can cost (the provider's documented maximum; unknown -> refused).
LIMIT_FIELDS = ("max_output_tokens", "max_image_tokens")


@dataclass
class Usage:
    """What one call used (or may use, for an estimate); priced here, budgeted in budget.py."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_seconds: float = 0.0
    characters: int = 0
    requests: int = 1
    cost_micro_usd: int = 0

    @property
    def audio_ms(self) -> int:
        """Audio length in whole milliseconds, rounded up so nothing is undercounted."""
        return -int(-self.audio_seconds * 1000 // 1)


@dataclass(frozen=True)
class Price:
    """What one model costs; a field is None when the model is not billed that way."""

    input_usd_per_mtok: Decimal | None = None
    output_usd_per_mtok: Decimal | None = None
    usd_per_audio_minute: Decimal | None = None
    usd_per_mchars: Decimal | None = None
    max_output_tokens: int | None = None
    max_image_tokens: int | None = None
    model: str = ""  # the table entry that matched
    source: str = "bundled"  # 'bundled' or 'config'


def _tok(inp: str, out: str, max_out: int | None = None, image: int | None = None) -> Price:
    return Price(Decimal(inp), Decimal(out), max_output_tokens=max_out, max_image_tokens=image)


def _per_minute(usd: str) -> Price:
    return Price(usd_per_audio_minute=Decimal(usd))


def _per_hour(usd: str) -> Price:
    return Price(usd_per_audio_minute=Decimal(usd) / 60)


def _per_mchars(usd: str) -> Price:
    return Price(usd_per_mchars=Decimal(usd))


# Anthropic resizes an image to at most ~1.15 megapixels, (width * height) / 750 tokens: ~1600.
_CLAUDE_IMAGE = 1600

# max_output_tokens and max_image_tokens from the providers' model pages (images: OpenAI's
# high-detail worst case, 8 tiles or 1536 patches times the model's multiplier); None = unknown.
# Prices from the providers' public price pages as known on 2025-11-30 (standard tier, uncached
# input, no batch discount). Keys are model names without date suffixes; lookups strip them.
BUNDLED: dict[str, dict[str, Price]] = {
    "openai": {
        "gpt-5": _tok("1.25", "10.00", 128_000, 1190),
        "gpt-5-mini": _tok("0.25", "2.00", 128_000, 2489),
        "gpt-5-nano": _tok("0.05", "0.40", 128_000, 3779),
        "gpt-4.1": _tok("2.00", "8.00", 32_768, 1445),
        "gpt-4.1-mini": _tok("0.40", "1.60", 32_768, 2489),
        "gpt-4.1-nano": _tok("0.10", "0.40", 32_768, 3779),
        "gpt-4o": _tok("2.50", "10.00", 16_384, 1445),
        "gpt-4o-2024-05-13": _tok(
            "5.00", "15.00", 4096, 1445
        ),  # the first gpt-4o kept its launch price
        "gpt-4o-mini": _tok("0.15", "0.60", 16_384, 48_169),
        "gpt-4-turbo": _tok("10.00", "30.00", 4096, 1445),
        "gpt-3.5-turbo": _tok("0.50", "1.50", 4096),
        "o1": _tok("15.00", "60.00", 100_000, 1275),
        "o1-pro": _tok("150.00", "600.00", 100_000, 1275),
        "o1-mini": _tok("1.10", "4.40", 65_536),
        "o3": _tok("2.00", "8.00", 100_000, 1275),
        "o3-pro": _tok("20.00", "80.00", 100_000, 1275),
        "o3-mini": _tok("1.10", "4.40", 100_000),
        "o4-mini": _tok("1.10", "4.40", 100_000, 2642),
        "text-embedding-3-small": _tok("0.02", "0"),
        "text-embedding-3-large": _tok("0.13", "0"),
        "whisper-1": _per_minute("0.006"),
        "gpt-4o-transcribe": _per_minute("0.006"),
        "gpt-4o-mini-transcribe": _per_minute("0.003"),
        "tts-1": _per_mchars("15.00"),
        "tts-1-hd": _per_mchars("30.00"),
    },
    "anthropic": {
        "claude-opus-4-5": _tok("5.00", "25.00", 64_000, _CLAUDE_IMAGE),
        "claude-opus-4-1": _tok("15.00", "75.00", 32_000, _CLAUDE_IMAGE),
        "claude-opus-4": _tok("15.00", "75.00", 32_000, _CLAUDE_IMAGE),
        "claude-sonnet-4-5": _tok("3.00", "15.00", 64_000, _CLAUDE_IMAGE),
        "claude-sonnet-4": _tok("3.00", "15.00", 64_000, _CLAUDE_IMAGE),
        "claude-haiku-4-5": _tok("1.00", "5.00", 64_000, _CLAUDE_IMAGE),
        "claude-3-7-sonnet": _tok("3.00", "15.00", 64_000, _CLAUDE_IMAGE),
        "claude-3-5-sonnet": _tok("3.00", "15.00", 8192, _CLAUDE_IMAGE),
        "claude-3-5-haiku": _tok("0.80", "4.00", 8192, _CLAUDE_IMAGE),
        "claude-3-opus": _tok("15.00", "75.00", 4096, _CLAUDE_IMAGE),
        "claude-3-haiku": _tok("0.25", "1.25", 4096, _CLAUDE_IMAGE),
    },
    "groq": {
        "llama-3.1-8b-instant": _tok("0.05", "0.08", 131_072),
        "llama-3.3-70b-versatile": _tok("0.59", "0.79", 32_768),
        "llama3-8b-8192": _tok("0.05", "0.08", 8192),
        "llama3-70b-8192": _tok("0.59", "0.79", 8192),
        "meta-llama/llama-4-scout-17b-16e-instruct": _tok("0.11", "0.34", 8192),
        "meta-llama/llama-4-maverick-17b-128e-instruct": _tok("0.20", "0.60", 8192),
        "gemma2-9b-it": _tok("0.20", "0.20", 8192),
        "whisper-large-v3": _per_hour("0.111"),
        "whisper-large-v3-turbo": _per_hour("0.04"),
        "distil-whisper-large-v3-en": _per_hour("0.02"),
    },
    "mistral": {
        "mistral-large": _tok("2.00", "6.00"),
        "mistral-medium": _tok("0.40", "2.00"),
        "mistral-small": _tok("0.10", "0.30"),
        "magistral-medium": _tok("2.00", "5.00"),
        "magistral-small": _tok("0.50", "1.50"),
        "codestral": _tok("0.30", "0.90"),
        "pixtral-large": _tok("2.00", "6.00"),
        "ministral-8b": _tok("0.10", "0.10"),
        "ministral-3b": _tok("0.04", "0.04"),
        "open-mistral-nemo": _tok("0.15", "0.15"),
        "mistral-embed": _tok("0.10", "0"),
    },
    "deepseek": {
        # Both names serve DeepSeek-V3.2 since 2025-09-29 at one price (cache-miss input).
        "deepseek-chat": _tok("0.28", "0.42", 8192),
        "deepseek-reasoner": _tok("0.28", "0.42", 65_536),
    },
    "xai": {
        "grok-4": _tok("3.00", "15.00"),
        "grok-4-fast-reasoning": _tok("0.20", "0.50"),
        "grok-4-fast-non-reasoning": _tok("0.20", "0.50"),
        "grok-code-fast-1": _tok("0.20", "1.50"),
        "grok-3": _tok("3.00", "15.00"),
        "grok-3-mini": _tok("0.30", "0.50"),
        "grok-2": _tok("2.00", "10.00"),
    },
}

# Date and version tails that name a snapshot of a model priced like its base name.
_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)$")


def _whole(value: Any, param: str) -> int:
    """A token limit: a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{param} must be a whole number >= 1", param=param)
    return value


def _candidates(model: str) -> list[str]:
    """Names to try for ``model``: itself, without a date tail, with Claude dots as dashes."""
    names = [model]
    base = model
    while True:
        stripped = _SUFFIX.sub("", base)
        if stripped == base or not stripped:
            break
        base = stripped
        names.append(base)
    for name in list(names):
        if name.startswith("claude") and "." in name:
            # OpenRouter spells 'claude-3.5-sonnet' what Anthropic spells 'claude-3-5-sonnet'.
            names.append(re.sub(r"(\d)\.(\d)", r"\1-\2", name))
    return names


class PriceTable:
    """The bundled prices plus the operator's ``[pricing."MODEL"]`` overrides."""

    def __init__(self, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.overrides: dict[str, dict[str, Any]] = {}
        # lookup()'s answers: Price is frozen and the table never changes once built.
        self._found: dict[tuple[str, str], Price | None] = {}
        for model, fields in (overrides or {}).items():
            where = f'pricing."{model}"'
            if not isinstance(fields, dict):
                raise InvalidRequest(f"{where} must be a table of prices", param=where)
            unknown = sorted(set(fields) - set(PRICE_FIELDS) - set(LIMIT_FIELDS))
            if unknown:
                known = ", ".join(PRICE_FIELDS + LIMIT_FIELDS)
                raise InvalidRequest(
                    f"{where} has unknown field {unknown[0]!r}; known: {known}",
                    param=f"{where}.{unknown[0]}",
                )
            if not fields:
                raise InvalidRequest(f"{where} sets no price", param=where)
            self.overrides[model] = {
                k: _whole(v, f"{where}.{k}")
                if k in LIMIT_FIELDS
                else parse_decimal(v, f"{where}.{k}")
                for k, v in fields.items()
            }

    def _bundled(self, provider: str, model: str) -> Price | None:
        """The bundled entry for ``model``, preferring ``provider``'s own table."""
        tables = [BUNDLED[provider]] if provider in BUNDLED else []
        if "/" in model:
            # 'openai/gpt-4o-mini' through a router such as OpenRouter: the prefix names the table.
            prefix, rest = model.split("/", 1)
            if prefix in BUNDLED:
                tables.append(BUNDLED[prefix])
            names = _candidates(model) + _candidates(rest)
        else:
            names = _candidates(model)
        tables += [table for name, table in BUNDLED.items() if name != provider]
        for table in tables:
            for name in names:
                if name in table:
                    return replace(table[name], model=name)
        return None

    def lookup(self, provider: str, model: str) -> Price | None:
        """The price of ``model`` at ``provider``, or None when nobody knows it."""
        # Asked twice per paid call; a table never changes (a reload builds a new one).
        key = (provider, model)
        if key in self._found:
            return self._found[key]
        if len(self._found) >= 1024:
            self._found.clear()  # a bound: clients choose model names under a glob
        price = self._found[key] = self._lookup(provider, model)
        return price

    def _lookup(self, provider: str, model: str) -> Price | None:
        bundled = self._bundled(provider, model)
        names = [f"{provider}/{model}", *_candidates(model)]
        if "/" in model:
            names += _candidates(model.split("/", 1)[1])
        override = next((n for n in names if n in self.overrides), None)
        if override is None:
            return bundled
        # An override changes only the fields it names; the rest stay as bundled.
        return replace(
            bundled or Price(), model=override, source="config", **self.overrides[override]
        )


def _need(value: Decimal | None, what: str, price: Price) -> Decimal:
    if value is None:
        raise ValueError(f"no {what} price is known for model {price.model!r}")
    return value


def cost_micro_usd(price: Price, usage: Usage) -> int:
    """The cost of ``usage`` in whole micro-dollars, rounded up."""
    total = Decimal(0)
    if usage.prompt_tokens:
        total += usage.prompt_tokens * _need(price.input_usd_per_mtok, "input token", price)
    if usage.completion_tokens:
        total += usage.completion_tokens * _need(price.output_usd_per_mtok, "output token", price)
    if usage.audio_seconds:
        per_minute = _need(price.usd_per_audio_minute, "audio minute", price)
        total += Decimal(str(usage.audio_seconds)) * per_minute * Decimal(1_000_000) / 60
    if usage.characters:
        total += usage.characters * _need(price.usd_per_mchars, "character", price)
    return int(math.ceil(total))
