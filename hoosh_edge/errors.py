"""One error tree for the whole gateway.

Every failure a client can see is a ``HooshError``. Its class says the HTTP status, the OpenAI
``type`` and the default ``code``; ``api`` turns any of them into
``{"error": {"message", "type", "param", "code"}}``.

    HooshError (500 server_error)
    +-- InvalidRequest (400 invalid_request_error)
    |   +-- ContextLengthExceeded (code context_length_exceeded)   fallback_ok
    |   +-- UnsupportedMediaType (415)
    +-- AuthenticationError (401)
    +-- PermissionDenied (403)
    |   +-- CrossOriginRefused (code cross_origin_refused)
    +-- RequestTimeout (408)
    +-- Conflict (409)
    |   +-- LastKey (code last_key)
    +-- MisdirectedRequest (421, code host_not_allowed)
    +-- NotFound (404)
    |   +-- ModelNotFound (code model_not_found)
    +-- PayloadTooLarge (413)
    +-- RateLimited (429 rate_limit_error, Retry-After)
    |   +-- QueueFull (code queue_full)                            fallback_ok
    |   +-- BudgetExceeded (insufficient_quota, code budget_exceeded)
    +-- ServiceUnavailable (503)
    |   +-- InsufficientMemory (code insufficient_memory)          fallback_ok
    |   +-- ProviderDisabled (code provider_disabled)              fallback_ok
    |   +-- StorageUnavailable (code storage_unavailable)          fallback_ok
    |   +-- ShuttingDown (code shutting_down)                       may_have_billed
    +-- DeadlineExceeded (504 deadline_exceeded)
    +-- UpstreamError (502 upstream_error)                         fallback_ok
        +-- UpstreamTimeout (504)
        +-- UpstreamStatus (the upstream's own 4xx/429/5xx)

``fallback_ok`` marks failures after which the router may try the next target: the target could
not serve, but the request itself was fine.
"""

from __future__ import annotations

import re
from typing import Any


class HooshError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    fallback_ok = False
    # The upstream had the whole request when this happened (a read timeout), so it may bill it.
    may_have_billed = False
    ends_connection = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        # Seconds after which a retry may succeed; the door says it in its own way (Retry-After).
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(HooshError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"
    fallback_ok = True  # another target may have a larger context


class UnsupportedMediaType(InvalidRequest):
    status = 415
    code = "unsupported_media_type"


class ProtocolViolation(InvalidRequest):
    """A Wyoming peer broke the framing or a bound: that connection ends with an error event."""

    code = "protocol_error"
    ends_connection = True


class AuthenticationError(HooshError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(HooshError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class CrossOriginRefused(PermissionDenied):
    code = "cross_origin_refused"


class RequestTimeout(HooshError):
    """The client did not send its request body in time (server.body_timeout_s)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    ends_connection = True  # the rest of the body is never read: the connection cannot go on


class Conflict(HooshError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class LastKey(Conflict):
    """Revoking this key would leave a gateway that listens beyond loopback with no key."""

    code = "last_key"


class MisdirectedRequest(HooshError):
    """The Host header names no name this gateway is known by (e.g. a DNS-rebinding page)."""

    status = 421
    type = "invalid_request_error"
    code = "host_not_allowed"


class NotFound(HooshError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(HooshError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(HooshError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QueueFull(RateLimited):
    code = "queue_full"
    fallback_ok = True


class BudgetExceeded(RateLimited):
    type = "insufficient_quota"
    code = "budget_exceeded"


class ServiceUnavailable(HooshError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class InsufficientMemory(ServiceUnavailable):
    code = "insufficient_memory"
    fallback_ok = True


class ProviderDisabled(ServiceUnavailable):
    code = "provider_disabled"
    fallback_ok = True


class StorageUnavailable(ServiceUnavailable):
    """The data folder cannot take a write (disk full, read-only, I/O error, damaged database).

    ``fallback_ok``: a paid target is refused when its reservation cannot be written, and a free
    on-device target may still serve the request.
    """

    code = "storage_unavailable"
    fallback_ok = True


class ShuttingDown(ServiceUnavailable):
    """SIGTERM's drain time ran out before this request finished; it is cut.

    ``may_have_billed``: a cloud call cut in flight may still be billed, so its reservation is
    booked, never given back.
    """

    code = "shutting_down"
    may_have_billed = True
    ends_connection = True


class DeadlineExceeded(HooshError):
    """The whole request ran past ``server.request_timeout_s``; no fallback after that."""

    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"


class UpstreamError(HooshError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"
    fallback_ok = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    """The upstream answered with an error status; its 4xx reach the client as they were."""

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        type: str | None = None,
        retry_after: float | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, retry_after=retry_after, **kw)
        self.upstream_status = upstream_status
        if upstream_status == 429:
            self.status = 429
            self.type = type or "rate_limit_error"
            self.code = kw.get("code") or "rate_limit_exceeded"
        elif upstream_status in (401, 403):
            # Our provider key was refused: the operator's problem, not the client's.
            self.status = 502
            self.type = "upstream_error"
            self.code = "upstream_auth_failed"
        elif 400 <= upstream_status < 500:
            # The client's own fault: pass it through, never fall back on it.
            self.status = upstream_status
            self.type = type or "invalid_request_error"
            self.fallback_ok = False
        else:
            self.status = 502
            self.type = "upstream_error"


_SECRET_PATTERNS = [
    re.compile(r"(?i)(authorization\s*[:=]\s*)(bearer\s+)?[^\s\"',}]+"),
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._\-]{6,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|x-api-key|access[_-]?token)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
    ),
    re.compile(r"\b(sk-(?:ant-)?)[A-Za-z0-9_\-]{8,}"),
]


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Remove known secrets and anything shaped like a key or an Authorization header."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "[REDACTED]", text)
    return text
