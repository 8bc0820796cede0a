"""Sending a prepared request straight on the urllib3 pool requests would use, and reading it.

``HTTPAdapter.send`` looks the pool up, re-checks TLS settings and builds a per-response cookie
jar on every call; for a provider's fixed URL that work always gives the same answer, so
``HttpClient`` does it once and sends here. Errors come out as requests' own exception types
(the mapping of ``HTTPAdapter.send`` and ``Response.iter_content``), so the retries and error
translation in ``http.py`` are the same on both paths.
"""

from __future__ import annotations

import select
from typing import Any

import gevent.monkey
import requests
import urllib3

_os_poll = gevent.monkey.get_original("select", "poll")


def check_with_os_poll(pool: Any) -> None:
    """Make the pool's new connections ask ``is_connected`` with the OS's poll."""
    stock = {urllib3.connection.HTTPConnection: _HTTPConnection,
             urllib3.connection.HTTPSConnection: _HTTPSConnection}  # fmt: skip
    pool.ConnectionCls = stock.get(pool.ConnectionCls, pool.ConnectionCls)


def _still_open(conn: urllib3.connection.HTTPConnection) -> bool:
    """urllib3's ``is_connected`` (nothing to read, not even EOF) asked with the OS's poll.

    urllib3 asks before reusing each kept-alive connection; gevent's patched poll sets up and
    tears down a watcher for that zero-timeout question, several times the cost of the syscall,
    which never blocks the hub.
    """
    if conn.sock is None:
        return False
    poller = _os_poll()
    poller.register(conn.sock, select.POLLIN)
    return not poller.poll(0)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    is_connected = property(_still_open)  # type: ignore[assignment]


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    is_connected = property(_still_open)  # type: ignore[assignment]


def urlopen(pool: Any, path: str, prep: requests.PreparedRequest, timeout: tuple[float, float],
             retries: Any) -> urllib3.BaseHTTPResponse:  # fmt: skip
    """``HTTPAdapter.send`` without its per-call pool lookup: urllib3 errors as requests' own."""
    try:
        return pool.urlopen(method="POST", url=path, body=prep.body, headers=prep.headers,
                            redirect=False, assert_same_host=False, preload_content=False,
                            decode_content=False, retries=retries, chunked=False,
                            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))  # fmt: skip
    except (urllib3.exceptions.ProtocolError, OSError) as e:
        raise requests.exceptions.ConnectionError(e, request=prep) from e
    except urllib3.exceptions.MaxRetryError as e:
        reason = e.reason
        if isinstance(reason, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
            reason, urllib3.exceptions.NewConnectionError
        ):
            raise requests.exceptions.ConnectTimeout(e, request=prep) from e
        if isinstance(reason, urllib3.exceptions.SSLError):
            raise requests.exceptions.SSLError(e, request=prep) from e
        raise requests.exceptions.ConnectionError(e, request=prep) from e
    except urllib3.exceptions.ClosedPoolError as e:
        raise requests.exceptions.ConnectionError(e, request=prep) from e
    except urllib3.exceptions.SSLError as e:
        raise requests.exceptions.SSLError(e, request=prep) from e
    except urllib3.exceptions.ReadTimeoutError as e:
        raise requests.exceptions.ReadTimeout(e, request=prep) from e
    except urllib3.exceptions.HTTPError as e:
        raise requests.exceptions.RequestException(e, request=prep) from e


def response(prep: requests.PreparedRequest, raw: Any, url: str) -> requests.Response:
    """``HTTPAdapter.build_response`` less the per-response cookie jar nobody here reads."""
    resp = requests.Response()
    resp.status_code = raw.status
    resp.headers = requests.structures.CaseInsensitiveDict(raw.headers)
    resp.encoding = requests.utils.get_encoding_from_headers(resp.headers)
    resp.raw = raw
    resp.reason = raw.reason
    resp.url = url
    resp.request = prep
    return resp


def read_all(resp: requests.Response) -> None:
    """``resp.content`` in one read (requests reads 10 KiB pieces through two generators)."""
    try:
        resp._content = resp.raw.read(decode_content=True) or b""
    except urllib3.exceptions.ProtocolError as e:
        raise requests.exceptions.ChunkedEncodingError(e) from e
    except urllib3.exceptions.DecodeError as e:
        raise requests.exceptions.ContentDecodingError(e) from e
    except urllib3.exceptions.ReadTimeoutError as e:
        raise requests.exceptions.ConnectionError(e) from e  # what requests raises here too
    except urllib3.exceptions.SSLError as e:
        raise requests.exceptions.SSLError(e) from e
    resp._content_consumed = True
