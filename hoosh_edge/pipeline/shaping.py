"""A chat request as one target should get it: the token-limit field it speaks, its own ceiling."""

from __future__ import annotations

from typing import Any

from hoosh_edge.config import Config
from hoosh_edge.pipeline.router import Target


def speaks_max_tokens_only(config: Config, target: Target) -> bool:
    """On-device models and Anthropic know ``max_tokens`` only, not ``max_completion_tokens``."""
    if target.backend.is_local:
        return True
    pcfg = config.provider(target.provider)
    return pcfg is not None and pcfg.type == "anthropic"


def request_for(config: Config, target: Target, base: dict[str, Any]) -> dict[str, Any]:
    """The chat request as ``target`` should get it."""
    req = dict(base)
    pcfg = config.provider(target.provider)
    limit = pcfg.max_tokens_limit if pcfg else None
    if speaks_max_tokens_only(config, target):
        mct = req.pop("max_completion_tokens", None)
        if mct is not None:
            req["max_tokens"] = mct
    if limit is not None:
        field = "max_completion_tokens" if "max_completion_tokens" in req else "max_tokens"
        asked = req.get(field)
        req[field] = limit if asked is None else min(asked, limit)
    return req
