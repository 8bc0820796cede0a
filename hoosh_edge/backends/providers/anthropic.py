"""Anthropic's Messages API behind the OpenAI chat interface: HTTP only.

The translation both ways (requests, answers, stream events) is ``hoosh_edge.formats.anthropic_*``;
this module sends the request, reads the answer or the SSE events and feeds the translator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from hoosh_edge.backends.providers.base import CallContext, ChatBackend
from hoosh_edge.backends.providers.catalog import ListsItsModels, ProviderModels, listed_ids
from hoosh_edge.backends.providers.http import HttpClient
from hoosh_edge.config import ProviderConfig
from hoosh_edge.config.presets import ANTHROPIC_API_VERSION
from hoosh_edge.errors import InvalidRequest, UpstreamError
from hoosh_edge.formats.anthropic_request import to_messages_request
from hoosh_edge.formats.anthropic_response import error_text, to_chat_completion
from hoosh_edge.formats.anthropic_stream import StreamTranslator


class AnthropicProvider(ListsItsModels, ChatBackend):
    """Serves OpenAI chat requests from Anthropic's Messages API."""

    def __init__(self, cfg: ProviderConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.http = HttpClient(cfg)
        self.catalog = ProviderModels(cfg, self._list_models)
        self.api_version = cfg.api_version or ANTHROPIC_API_VERSION

    def _list_models(self) -> list[str]:
        return listed_ids(
            self.http.get_json(f"{self.cfg.base_url}/models?limit=1000", headers=self._headers())
        )

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.api_version}
        if self.cfg.api_key:
            headers["x-api-key"] = self.cfg.api_key
        return headers

    def _body(self, model: str, req: dict[str, Any], stream: bool) -> dict[str, Any]:
        if "legacy" in req:  # formats.openai_completions.LEGACY: a raw prompt, no chat turn
            err = InvalidRequest(f"Provider '{self.name}' (Anthropic) has no legacy completions "
                                 "API; use /v1/chat/completions or /v1/messages.", param="model")  # fmt: skip
            err.fallback_ok = True  # another target may take a raw prompt
            raise err
        body = to_messages_request(model, req, max_tokens_limit=self.cfg.max_tokens_limit)
        body["stream"] = stream
        return body

    def complete(self, model: str, req: dict[str, Any], ctx: CallContext) -> dict:
        body = self._body(model, req, stream=False)
        resp = self.http.post(f"{self.cfg.base_url}/messages", body=body, headers=self._headers())
        doc = self.http.answer_json(resp)
        if isinstance(doc, dict) and doc.get("type") == "error":
            raise UpstreamError(self.http.clean(f"{self.name} reported: {error_text(doc)}"))
        if not isinstance(doc, dict) or not isinstance(doc.get("content"), list):
            raise UpstreamError(
                self.http.clean(f"{self.name} answered without 'content': {str(doc)[:200]}")
            )
        return to_chat_completion(doc, model, self.name)

    def stream(self, model: str, req: dict[str, Any], ctx: CallContext) -> Iterator[dict]:
        body = self._body(model, req, stream=True)
        resp = self.http.post(
            f"{self.cfg.base_url}/messages", body=body, headers=self._headers(), stream=True
        )
        state = StreamTranslator(model, self.name)
        events = self.http.events(resp)
        try:
            for event in events:
                if not event.data:
                    continue
                try:
                    data = json.loads(event.data)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    ctx.malformed(self.name, event.data)
                    continue
                etype = data.get("type") or event.event
                try:
                    yield from state.feed(etype, data)
                except UpstreamError as e:
                    raise UpstreamError(self.http.clean(e.message)) from None
                if state.done:
                    return
        finally:
            events.close()
        raise UpstreamError(f"{self.name}: stream ended early, before message_stop")

    def close(self) -> None:
        self.http.close()
