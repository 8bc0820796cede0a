"""HTTP to upstream providers: pooled connections, retries, and error translation.

Retries (exponential backoff with jitter, ``Retry-After`` honoured, total time capped) happen only
where repeating is safe: a connection that never reached the server, and 429/5xx answers that came
before any byte reached our client. A read timeout is not retried (the upstream may be doing, and
billing, the work), and a 4xx is never retried.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import gevent
import requests
import sseclient
import urllib3
from requests.adapters import HTTPAdapter

from hoosh_edge.backends.providers import direct
from hoosh_edge.config import ProviderConfig
from hoosh_edge.errors import UpstreamError, UpstreamStatus, UpstreamTimeout, redact

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpClient:
    """One pooled ``requests.Session`` per provider."""

    backoff_base_s = 0.25

    def __init__(self, cfg: ProviderConfig) -> None:
        self.cfg = cfg
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=64, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(dict(cfg.headers))
        # Proxy and CA settings from the environment are read once here, not per request:
        # requests otherwise walks every environment variable on each call (~0.2 ms).
        self.session.proxies.update(requests.utils.get_environ_proxies(cfg.base_url))
        ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca:
            self.session.verify = ca
        self.session.trust_env = False
        # (url, headers) -> a request prepared once the way the session would, and its adapter.
        self._templates: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Any, Any]] = {}

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.cfg.api_key,) if self.cfg.api_key else ()

    def clean(self, text: str) -> str:
        """Text safe to log or return: no key of ours, nothing shaped like one."""
        return redact(text, self.secrets)

    def get_json(self, url: str, *, headers: dict[str, str], limit: int = 4 << 20) -> Any:
        """GET a small JSON document (a model list): one try, bounded in time and size."""
        cfg = self.cfg
        try:
            resp = self.session.get(url, headers=headers, stream=True,
                                    timeout=(cfg.connect_timeout_s, min(cfg.timeout_s, 10)))  # fmt: skip
        except requests.exceptions.RequestException as e:
            raise UpstreamError(f"{cfg.name}: request failed ({self.clean(_short(e))})") from e
        with resp:
            if resp.status_code >= 400:
                raise self.status_error(resp)
            raw = resp.raw.read(limit + 1, decode_content=True)
        if len(raw) > limit:
            raise UpstreamError(f"{cfg.name}: the answer to GET {url} is over {limit} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise UpstreamError(f"{cfg.name}: GET {url} answered with invalid JSON") from None

    def answer_json(self, resp: requests.Response) -> Any:
        """The JSON of a whole answer; anything else is an upstream error (secrets redacted)."""
        try:
            return resp.json()
        except ValueError:
            raise UpstreamError(
                self.clean(f"{self.cfg.name} answered with invalid JSON: {resp.text[:200]!r}")
            ) from None

    def post(
        self,
        url: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str],
        stream: bool = False,
        form: dict[str, str] | None = None,
        files: dict[str, Any] | None = None,
    ) -> requests.Response:
        """POST JSON (or a multipart form); retry what is safe to retry; raise HooshErrors."""
        cfg = self.cfg
        deadline = time.monotonic() + cfg.retry_max_s
        attempt = 0
        if files is None:
            data: Any = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json", **headers}
        else:
            data = form or {}
        while True:
            attempt += 1
            timeout = (cfg.connect_timeout_s, cfg.timeout_s)
            try:
                if files is None and not self.session.cookies:
                    resp = self._send_json(url, data, headers, timeout=timeout, stream=stream)
                else:
                    resp = self.session.post(url, data=data, files=files, headers=headers,
                                             timeout=timeout, stream=stream)  # fmt: skip
            except requests.exceptions.ConnectTimeout as e:
                err: UpstreamError = UpstreamTimeout(
                    f"{cfg.name}: connection timed out ({self.clean(str(e))})"
                )
                retry_after = None
            except requests.exceptions.ReadTimeout as e:
                late = UpstreamTimeout(f"{cfg.name}: no answer within {cfg.timeout_s:g}s")
                late.may_have_billed = True  # it got the request and may be working on it
                raise late from e
            except requests.exceptions.ConnectionError as e:
                err = UpstreamError(f"{cfg.name}: cannot connect ({self.clean(_short(e))})")
                retry_after = None
            except requests.exceptions.RequestException as e:
                raise UpstreamError(f"{cfg.name}: request failed ({self.clean(_short(e))})") from e
            else:
                if resp.status_code < 400:
                    return resp
                err = self.status_error(resp)
                retry_after = err.retry_after if isinstance(err, UpstreamStatus) else None
                if resp.status_code not in RETRY_STATUSES:
                    raise err
            if attempt > cfg.max_retries:
                raise err
            delay = self.backoff_base_s * (2 ** (attempt - 1)) * (0.5 + random.random())
            if retry_after is not None:
                delay = max(delay, retry_after)
            if time.monotonic() + delay > deadline:
                raise err
            log.info("%s: retrying in %.2fs after: %s", cfg.name, delay, err.message)
            gevent.sleep(delay)

    def _send_json(
        self, url: str, data: bytes, headers: dict[str, str], *, timeout: Any, stream: bool
    ) -> requests.Response:
        """``session.post(url, data=data, headers=headers)``, without re-merging settings per call.

        ``Session.request`` merges headers, cookies, proxies and hooks and re-parses the URL on
        every call; for the same URL and headers that work always gives the same request, so it
        is done once. Only the body differs. Redirects and cookies are handled as the session
        would (a cookie, once set, sends later calls the ordinary way).
        """
        key = (url, tuple(headers.items()))
        template = self._templates.get(key)
        if template is None or (template[2] is not None and template[2].pool is None):
            template = self._template(url, headers)  # new, or its pool was closed (evicted)
        base, adapter, pool, path = template
        prep = requests.PreparedRequest()
        prep.method, prep.url, prep.hooks = base.method, base.url, base.hooks
        prep.headers = base.headers.copy()
        prep._cookies = base._cookies
        prep.prepare_body(data, None)
        session = self.session
        settings = {"timeout": timeout, "verify": session.verify, "cert": session.cert,
                    "proxies": session.proxies}  # fmt: skip
        if pool is None:
            resp = requests.hooks.dispatch_hook(
                "response", prep.hooks, adapter.send(prep, stream=stream, **settings), **settings
            )
        else:
            raw = direct.urlopen(pool, path, prep, timeout, adapter.max_retries)
            resp = direct.response(prep, raw, url)
        if "Set-Cookie" in resp.headers:
            requests.cookies.extract_cookies_to_jar(session.cookies, prep, resp.raw)
        if resp.is_redirect:
            history = [resp, *session.resolve_redirects(resp, prep, stream=stream, **settings)]
            resp = history.pop()
            resp.history = history
        if not stream and resp._content is False:
            direct.read_all(resp)  # read it all now, as Session.send does
        return resp

    def _template(self, url: str, headers: dict[str, str]) -> tuple[Any, Any, Any, str]:
        """The request as the session prepares it, its adapter, and the pool to send it on."""
        # The pool (and path) only when no proxy or response hook needs requests' own send.
        prepared = self.session.prepare_request(requests.Request("POST", url, headers=headers))
        adapter = self.session.get_adapter(url)
        pool, path = None, ""
        plain = isinstance(adapter, HTTPAdapter) and not any(prepared.hooks.values())
        if plain and not requests.utils.select_proxy(url, self.session.proxies):
            # The pool requests itself would pick (TLS settings included), looked up once.
            pool = adapter.get_connection_with_tls_context(prepared, self.session.verify,
                                                           cert=self.session.cert)  # fmt: skip
            adapter.cert_verify(pool, url, self.session.verify, self.session.cert)
            path = prepared.path_url
            direct.check_with_os_poll(pool)
        if len(self._templates) >= 64:
            self._templates.clear()  # a bound, though URLs and headers are few per provider
        template = self._templates[(url, tuple(headers.items()))] = (prepared, adapter, pool, path)
        return template

    def status_error(self, resp: requests.Response) -> UpstreamStatus:
        """Turn an upstream error answer into an error whose message the client may see."""
        try:
            raw = resp.content[:65536]
        except requests.exceptions.RequestException:
            raw = b""
        finally:
            resp.close()
        message, etype, code, param = _error_fields(raw)
        if not message:
            text = raw.decode("utf-8", "replace").strip()
            message = text[:300] if text else resp.reason or "no details"
        message = self.clean(f"{self.cfg.name} returned HTTP {resp.status_code}: {message}")
        return UpstreamStatus(
            message,
            upstream_status=resp.status_code,
            type=etype,
            code=code,
            param=param,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
        )

    def events(self, resp: requests.Response) -> Iterator[sseclient.Event]:
        """SSE events of a streaming answer; transport failures become HooshErrors."""
        ctype = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype.lower():
            try:
                raw = resp.content[:65536]
            finally:
                resp.close()
            message, *_ = _error_fields(raw)
            detail = f": {message}" if message else ""
            raise UpstreamError(
                self.clean(
                    f"{self.cfg.name} answered a streaming request with Content-Type "
                    f"{ctype or 'none'!r} instead of text/event-stream{detail}"
                )
            )
        try:
            client = sseclient.SSEClient(_arrivals(resp))
            yield from client.events()
        except requests.exceptions.ConnectionError as e:
            if "timed out" in str(e).lower():
                raise UpstreamTimeout(
                    f"{self.cfg.name}: stream stalled for over {self.cfg.timeout_s:g}s"
                ) from e
            raise UpstreamError(
                f"{self.cfg.name}: stream broke off ({self.clean(_short(e))})"
            ) from e
        except requests.exceptions.RequestException as e:
            raise UpstreamError(
                f"{self.cfg.name}: stream broke off ({self.clean(_short(e))})"
            ) from e
        finally:
            resp.close()

    def close(self) -> None:
        self.session.close()


def _arrivals(resp: requests.Response) -> Iterator[bytes]:
    """The body in pieces as they arrive, whether chunked or ended by closing the connection.

    ``iter_content(None)`` on a body without chunked framing reads to the end before yielding:
    the client would see nothing until the upstream finished, and the gateway would hold it all.
    """
    if resp.raw.chunked:
        yield from resp.iter_content(chunk_size=None)  # one piece per HTTP chunk
        return
    try:
        while data := resp.raw.read1(65536):  # what has arrived, without waiting for 64 KB
            yield data
    except urllib3.exceptions.ReadTimeoutError as e:
        raise requests.exceptions.ConnectionError(f"read timed out: {e}") from e
    except (urllib3.exceptions.ProtocolError, OSError) as e:
        raise requests.exceptions.ConnectionError(str(e)) from e


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:200] + "..."


def _error_fields(raw: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """message, type, code, param from an OpenAI- or Anthropic-style error body."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, None, None, None
    if not isinstance(doc, dict):
        return None, None, None, None
    err = doc.get("error", doc)
    if isinstance(err, str):
        return err, None, None, None
    if not isinstance(err, dict):
        return None, None, None, None
    message = err.get("message")
    code = err.get("code")
    return (
        str(message) if message is not None else None,
        err.get("type") if isinstance(err.get("type"), str) else None,
        str(code) if code is not None else None,
        err.get("param") if isinstance(err.get("param"), str) else None,
    )
