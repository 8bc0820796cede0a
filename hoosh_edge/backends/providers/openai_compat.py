"""Any OpenAI-compatible chat API: OpenAI itself, Groq, Mistral, DeepSeek, OpenRouter, xAI,
Ollama, LM Studio, llama-server, LocalAI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from hoosh_edge.backends.providers.base import CallContext, ChatBackend
from hoosh_edge.backends.providers.catalog import ListsItsModels, ProviderModels, listed_ids
from hoosh_edge.backends.providers.http import HttpClient
from hoosh_edge.config import ProviderConfig
from hoosh_edge.errors import InvalidRequest, UpstreamError, UpstreamStatus
from hoosh_edge.formats import openai_completions as legacy
from hoosh_edge.formats import openai_responses_up as up
from hoosh_edge.formats.openai_checks import chunk_problem, completion_problem


class OpenAICompatProvider(ListsItsModels, ChatBackend):
    """Forwards OpenAI chat requests nearly as they are."""

    can_transcribe = True
    can_speak = True
    can_embed = True
    can_probe = True

    def __init__(self, cfg: ProviderConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.http = HttpClient(cfg)
        self.catalog = ProviderModels(cfg, self._list_models)

    def _list_models(self) -> list[str]:
        return listed_ids(
            self.http.get_json(f"{self.cfg.base_url}/models", headers=self._headers())
        )

    def _headers(self) -> dict[str, str]:
        if self.cfg.api_key:
            return {"Authorization": f"Bearer {self.cfg.api_key}"}
        return {}

    def _body(self, model: str, req: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in req.items() if v is not None and k != up.PASS}
        body["model"] = model
        return body

    def complete(self, model: str, req: dict[str, Any], ctx: CallContext) -> dict:
        if legacy.LEGACY in req:
            return self._legacy_complete(model, req)
        if up.PASS in req and self.cfg.responses_api:
            return self._responses_complete(model, req)
        body = self._body(model, req)
        body["stream"] = False
        body.pop("stream_options", None)
        resp = self.http.post(
            f"{self.cfg.base_url}/chat/completions", body=body, headers=self._headers()
        )
        doc = self.http.answer_json(resp)
        if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
            raise UpstreamError(f"{self.name} answered without 'choices': {str(doc)[:200]}")
        problem = completion_problem(doc)
        if problem:
            raise UpstreamError(self.http.clean(
                f"{self.name} answered in a shape OpenAI's API never sends: {problem}"))  # fmt: skip
        return doc

    def stream(self, model: str, req: dict[str, Any], ctx: CallContext) -> Iterator[dict]:
        if legacy.LEGACY in req:
            yield from self._legacy_stream(model, req, ctx)
            return
        if up.PASS in req and self.cfg.responses_api:
            yield from self._responses_stream(model, req, ctx)
            return
        body = self._body(model, req)
        body["stream"] = True
        # Ask for the real token counts in the final chunk: the budget needs them.
        body["stream_options"] = {"include_usage": True}
        resp = self.http.post(
            f"{self.cfg.base_url}/chat/completions",
            body=body,
            headers=self._headers(),
            stream=True,
        )
        finished = False
        for event in self.http.events(resp):
            data = event.data
            if not data:
                continue
            if data.strip() == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                ctx.malformed(self.name, data)
                continue
            if not isinstance(chunk, dict) or chunk_problem(chunk):
                ctx.malformed(self.name, data)
                continue
            if "error" in chunk and "choices" not in chunk:
                err = chunk["error"]
                msg = err.get("message") if isinstance(err, dict) else str(err)
                raise UpstreamError(self.http.clean(f"{self.name} reported mid-stream: {msg}"))
            if any(
                c.get("finish_reason") for c in chunk.get("choices") or () if isinstance(c, dict)
            ):
                finished = True
            yield chunk
        if not finished:
            # The connection closed cleanly but the completion never did: a cut stream.
            raise UpstreamError(f"{self.name}: stream ended before the completion finished")

    def _responses_complete(self, model: str, req: dict[str, Any]) -> dict:
        """A /v1/responses request, sent on to the upstream's own Responses API."""
        resp = self.http.post(f"{self.cfg.base_url}/responses", headers=self._headers(),
                              body=up.upstream_body(model, req, stream=False))  # fmt: skip
        return up.chat_from_response(self.http.answer_json(resp), self.name)

    def _responses_stream(
        self, model: str, req: dict[str, Any], ctx: CallContext
    ) -> Iterator[dict]:
        resp = self.http.post(f"{self.cfg.base_url}/responses", headers=self._headers(),
                              body=up.upstream_body(model, req, stream=True), stream=True)  # fmt: skip
        events = up.ChunkMaker(self.name)
        for event in self.http.events(resp):
            try:
                data = json.loads(event.data) if event.data else None
            except ValueError:
                ctx.malformed(self.name, event.data)
                continue
            yield from events.feed(data)
            if events.done:
                return
        raise UpstreamError(f"{self.name}: stream ended before the response completed")

    def _legacy_complete(self, model: str, req: dict[str, Any]) -> dict:
        """A raw-prompt request, forwarded to the upstream's own legacy ``/completions``."""
        resp = self._legacy_post(legacy.upstream_body(model, req), stream=False)
        doc = legacy.chat_from_legacy(self.http.answer_json(resp), chunk=False)
        if doc is None or completion_problem(doc):
            raise UpstreamError(f"{self.name} answered /completions without text choices")
        return doc

    def _legacy_post(self, body: dict[str, Any], *, stream: bool) -> Any:
        try:
            return self.http.post(f"{self.cfg.base_url}/completions", body=body,
                                  headers=self._headers(), stream=stream)  # fmt: skip
        except UpstreamStatus as e:
            if e.upstream_status not in (404, 405):
                raise
            # A chat-only server: say so plainly (another target may still take the prompt).
            err = InvalidRequest(f"Provider '{self.name}' has no legacy /completions API; use "
                                 "/v1/chat/completions.", param="model")  # fmt: skip
            err.fallback_ok = True
            raise err from None

    def _legacy_stream(self, model: str, req: dict[str, Any], ctx: CallContext) -> Iterator[dict]:
        body = {**legacy.upstream_body(model, req), "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        resp = self._legacy_post(body, stream=True)
        for event in self.http.events(resp):
            data = (event.data or "").strip()
            if data == "[DONE]":
                return
            try:
                chunk = legacy.chat_from_legacy(json.loads(data), chunk=True) if data else None
            except ValueError:
                chunk = None
            if chunk is None or chunk_problem(chunk):
                if data:
                    ctx.malformed(self.name, data)
                continue
            yield chunk
        raise UpstreamError(f"{self.name}: stream ended before the completion finished")

    def transcribe(
        self, model: str, data: bytes, filename: str, form: dict[str, str], *, translate: bool
    ) -> tuple[bytes, str]:
        """OpenAI's /audio/transcriptions (or /translations): the body and its Content-Type."""
        path = "translations" if translate else "transcriptions"
        resp = self.http.post(
            f"{self.cfg.base_url}/audio/{path}",
            headers=self._headers(),
            form={**form, "model": model},
            files={"file": (filename or "audio", data, "application/octet-stream")},
        )
        return resp.content, resp.headers.get("Content-Type", "application/json")

    def speech(self, model: str, body: dict[str, Any]) -> tuple[Iterator[bytes], str]:
        """OpenAI's /audio/speech, streamed through: the byte chunks and their Content-Type."""
        resp = self.http.post(
            f"{self.cfg.base_url}/audio/speech",
            body={**body, "model": model},
            headers=self._headers(),
            stream=True,
        )

        def chunks() -> Iterator[bytes]:
            try:
                yield from resp.iter_content(chunk_size=16384)
            except Exception as e:  # noqa: BLE001 - the body is cut: end it, say why in the log
                raise UpstreamError(
                    f"{self.name}: speech stream broke off ({type(e).__name__})"
                ) from e
            finally:
                resp.close()

        return chunks(), resp.headers.get("Content-Type", "application/octet-stream")

    def embeddings(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's /embeddings: the list document, checked to hold one vector per input."""
        resp = self.http.post(f"{self.cfg.base_url}/embeddings", body={**body, "model": model},
                              headers=self._headers())  # fmt: skip
        doc = self.http.answer_json(resp)
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list) or not all(
            isinstance(d, dict) and isinstance(d.get("embedding"), (list, str)) for d in data
        ):
            raise UpstreamError(self.http.clean(
                f"{self.name} answered /embeddings without a 'data' list of embeddings: "
                f"{str(doc)[:200]}"))  # fmt: skip
        return doc

    def probe(self) -> None:
        """A cheap GET of the model list: raises unless the provider answers."""
        try:
            resp = self.http.session.get(f"{self.cfg.base_url}/models", headers=self._headers(),
                                         timeout=(self.cfg.connect_timeout_s, 10))  # fmt: skip
        except Exception as e:  # noqa: BLE001 - any failure means still down
            raise UpstreamError(f"{self.name}: probe failed ({type(e).__name__})") from e
        resp.close()
        if resp.status_code >= 500 or resp.status_code == 429:
            raise UpstreamError(f"{self.name}: probe answered HTTP {resp.status_code}")

    def close(self) -> None:
        self.http.close()
