"""The offline price table: lookups, dated variants, router prefixes, overrides, exact costs."""

from __future__ import annotations

from decimal import Decimal

import pytest

from hoosh_edge.books.ledger import Usage
from hoosh_edge.books.money import format_usd
from hoosh_edge.books.pricing import BUNDLED, Price, PriceTable, cost_micro_usd
from hoosh_edge.errors import InvalidRequest


@pytest.fixture
def table() -> PriceTable:
    return PriceTable({})


@pytest.mark.parametrize(
    ("provider", "model", "matched", "inp", "out"),
    [
        ("openai", "gpt-4o-mini", "gpt-4o-mini", "0.15", "0.60"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini", "0.15", "0.60"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o", "2.50", "10.00"),
        ("openai", "gpt-4o-2024-05-13", "gpt-4o-2024-05-13", "5.00", "15.00"),  # own price
        ("openai", "gpt-4.1-nano-2025-04-14", "gpt-4.1-nano", "0.10", "0.40"),
        ("openai", "o3-mini-2025-01-31", "o3-mini", "1.10", "4.40"),
        ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4", "3.00", "15.00"),
        ("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku", "0.80", "4.00"),
        ("anthropic", "claude-opus-4-1-20250805", "claude-opus-4-1", "15.00", "75.00"),
        ("openrouter", "openai/gpt-4o-mini", "gpt-4o-mini", "0.15", "0.60"),
        ("openrouter", "anthropic/claude-3.7-sonnet", "claude-3-7-sonnet", "3.00", "15.00"),
        ("groq", "llama-3.3-70b-versatile", "llama-3.3-70b-versatile", "0.59", "0.79"),
        (
            "groq",
            "meta-llama/llama-4-scout-17b-16e-instruct",
            "meta-llama/llama-4-scout-17b-16e-instruct",
            "0.11",
            "0.34",
        ),
        ("mistral", "mistral-large-latest", "mistral-large", "2.00", "6.00"),
        ("mistral", "mistral-large-2411", "mistral-large", "2.00", "6.00"),
        ("deepseek", "deepseek-chat", "deepseek-chat", "0.28", "0.42"),
        ("xai", "grok-4-0709", "grok-4", "3.00", "15.00"),
        ("xai", "grok-3-mini-latest", "grok-3-mini", "0.30", "0.50"),
        ("azure", "gpt-4o", "gpt-4o", "2.50", "10.00"),  # unknown provider: any table's entry
    ],
)
def test_lookup(
    table: PriceTable, provider: str, model: str, matched: str, inp: str, out: str
) -> None:
    price = table.lookup(provider, model)
    assert price is not None
    assert (price.model, price.input_usd_per_mtok, price.output_usd_per_mtok) == (
        matched,
        Decimal(inp),
        Decimal(out),
    )
    assert price.source == "bundled"


def test_unknown_models_have_no_price(table: PriceTable) -> None:
    assert table.lookup("openai", "gpt-99-turbo") is None
    assert table.lookup("openrouter", "someone/unheard-of-7b") is None
    assert table.lookup("groq", "2024-01-01") is None  # a bare date is not a model


def test_every_preset_has_prices() -> None:
    assert {"openai", "anthropic", "groq", "mistral", "deepseek", "xai"} <= set(BUNDLED)
    for provider, models in BUNDLED.items():
        for model, price in models.items():
            fields = [price.input_usd_per_mtok, price.usd_per_audio_minute, price.usd_per_mchars]
            assert any(f is not None for f in fields), (provider, model)


def test_token_cost_is_exact_micro_dollars(table: PriceTable) -> None:
    price = table.lookup("openai", "gpt-4o-mini")
    # 1000 * 0.15 + 2000 * 0.60 micro-dollars: USD per million tokens is micro-USD per token.
    assert cost_micro_usd(price, Usage(prompt_tokens=1000, completion_tokens=2000)) == 1350
    many = Usage(prompt_tokens=3_000_000, completion_tokens=1_000_000)
    assert cost_micro_usd(price, many) == 1_050_000  # $1.05, no float drift


def test_cost_rounds_up_to_the_micro_dollar(table: PriceTable) -> None:
    nano = table.lookup("openai", "gpt-4.1-nano")
    assert cost_micro_usd(nano, Usage(prompt_tokens=1)) == 1  # 0.1 micro-USD is not free
    assert cost_micro_usd(nano, Usage(prompt_tokens=10)) == 1  # exactly 1.0 stays 1
    assert cost_micro_usd(nano, Usage(prompt_tokens=11)) == 2
    assert cost_micro_usd(nano, Usage()) == 0


def test_audio_and_speech_costs(table: PriceTable) -> None:
    whisper = table.lookup("openai", "whisper-1")
    assert cost_micro_usd(whisper, Usage(audio_seconds=60)) == 6000
    assert cost_micro_usd(whisper, Usage(audio_seconds=61)) == 6100
    assert cost_micro_usd(whisper, Usage(audio_seconds=0.01)) == 1  # 0.001 micro-USD, rounded up
    mini = table.lookup("openai", "gpt-4o-mini-transcribe")
    assert cost_micro_usd(mini, Usage(audio_seconds=120)) == 6000
    turbo = table.lookup("groq", "whisper-large-v3-turbo")  # $0.04 an hour
    assert cost_micro_usd(turbo, Usage(audio_seconds=3600)) == 40_000
    assert cost_micro_usd(turbo, Usage(audio_seconds=1)) == 12  # 11.1 rounded up
    tts = table.lookup("openai", "tts-1-hd")
    assert cost_micro_usd(tts, Usage(characters=1000)) == 30_000
    assert cost_micro_usd(table.lookup("openai", "tts-1"), Usage(characters=1)) == 15


def test_a_dimension_without_a_price_is_an_error_not_free(table: PriceTable) -> None:
    with pytest.raises(ValueError, match="audio minute"):
        cost_micro_usd(table.lookup("openai", "gpt-4o"), Usage(audio_seconds=3))
    with pytest.raises(ValueError, match="input token"):
        cost_micro_usd(table.lookup("openai", "tts-1"), Usage(prompt_tokens=3))


def test_override_changes_only_the_fields_it_names() -> None:
    table = PriceTable({"gpt-4o-mini": {"input_usd_per_mtok": "0.20"}})
    price = table.lookup("openai", "gpt-4o-mini-2024-07-18")
    assert price.input_usd_per_mtok == Decimal("0.20")
    assert price.output_usd_per_mtok == Decimal("0.60")
    assert price.source == "config"


def test_override_prices_an_unknown_model_exactly() -> None:
    table = PriceTable(
        {
            "my-finetune": {"input_usd_per_mtok": 0.3, "output_usd_per_mtok": 1.2},
            "openai/gpt-4o": {"input_usd_per_mtok": "3", "output_usd_per_mtok": "12"},
        }
    )
    price = table.lookup("openai", "my-finetune")
    assert price.input_usd_per_mtok == Decimal("0.3")  # the float 0.3, read as written
    assert cost_micro_usd(price, Usage(prompt_tokens=10, completion_tokens=10)) == 15
    # 'PROVIDER/MODEL' keys: that provider's model, or a router's name for it.
    assert table.lookup("openai", "gpt-4o").input_usd_per_mtok == Decimal("3")
    assert table.lookup("openrouter", "openai/gpt-4o").input_usd_per_mtok == Decimal("3")
    assert table.lookup("azure", "gpt-4o").input_usd_per_mtok == Decimal("2.50")


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"m": {"input_usd_per_mtok": -1}}, 'pricing."m".input_usd_per_mtok'),
        ({"m": {"input_usd_per_mtok": "cheap"}}, 'pricing."m".input_usd_per_mtok'),
        ({"m": {"input_usd_per_mtok": True}}, 'pricing."m".input_usd_per_mtok'),
        ({"m": {"usd_per_token": 1}}, 'pricing."m".usd_per_token'),
        ({"m": {}}, 'pricing."m"'),
        ({"m": {"max_output_tokens": 0}}, 'pricing."m".max_output_tokens'),
        ({"m": {"max_output_tokens": "lots"}}, 'pricing."m".max_output_tokens'),
        ({"m": {"max_image_tokens": 1.5}}, 'pricing."m".max_image_tokens'),
        ({"m": 5}, 'pricing."m"'),
    ],
)
def test_bad_overrides_name_the_field(overrides: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        PriceTable(overrides)
    assert caught.value.param == param


def test_limits_are_columns_of_the_table_and_can_be_overridden() -> None:
    table = PriceTable({"gpt-4o-mini": {"max_output_tokens": 300}})
    price = table.lookup("openai", "gpt-4o-mini")
    assert (price.max_output_tokens, price.max_image_tokens) == (300, 48_169)
    assert price.input_usd_per_mtok == Decimal("0.15")  # prices stay as bundled
    claude = table.lookup("anthropic", "claude-sonnet-4-5-20250929")
    assert (claude.max_output_tokens, claude.max_image_tokens) == (64_000, 1600)
    assert table.lookup("mistral", "mistral-small").max_output_tokens is None  # not documented
    # Every chat model's maximum output is a plausible documented figure, where one is known.
    for models in BUNDLED.values():
        for name, p in models.items():
            if p.max_output_tokens is not None:
                assert 4096 <= p.max_output_tokens <= 131_072, name


def test_format_usd() -> None:
    assert [format_usd(v) for v in (0, 1, 1500, 10_000, 2_000_000, 1_234_567)] == [
        "0",
        "0.000001",
        "0.0015",
        "0.01",
        "2",
        "1.234567",
    ]


def test_price_defaults_to_unpriced_dimensions() -> None:
    assert Price().input_usd_per_mtok is None and Price().source == "bundled"
