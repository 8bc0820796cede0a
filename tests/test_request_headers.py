"""The header parser http.client, pywsgi and urllib3 use gives what the stdlib's gives."""

from __future__ import annotations

import http.client
import io
import socket

import requests
from gevent.pywsgi import OldMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from hoosh_edge.serve.headers import parse_headers

STDLIB = http.client.parse_headers
assert STDLIB.__module__ == "http.client"  # the reference, not ours installed by boot

# Bytes that matter to either parser: separators, line ends, folding, the colon, latin-1.
_ALPHABET = st.sampled_from(list(b"aZ-_: \t\r\n:\x0b\x0c\x1c\x1d\x1e\x85\xe9\x7f\x00"))


def _parsed(parse, raw: bytes) -> tuple:
    fp = io.BufferedReader(io.BytesIO(raw + b"GET /next HTTP/1.1\r\n"))
    try:
        msg = parse(fp)
    except Exception as e:  # noqa: BLE001 - the kind of failure is part of what is compared
        return ("raised", type(e).__name__, str(e))
    rest = fp.read()  # where the next request starts
    return (rest, type(msg), getattr(msg, "status", None), msg.items(),
            [type(d) for d in msg.defects], msg.get("content-length"), msg.get_all("x"))  # fmt: skip


def _same(raw: bytes) -> None:
    for cls in (http.client.HTTPMessage, OldMessage):  # urllib3's and pywsgi's
        ours = _parsed(lambda fp, c=cls: parse_headers(fp, _class=c), raw)
        assert ours == _parsed(lambda fp, c=cls: STDLIB(fp, _class=c), raw), (cls, raw)


_FIELD = st.tuples(st.sampled_from([b"X", b"Content-Length", b"x-a_b", b"A B", b"", b" X"]),
                   st.sampled_from([b":", b": ", b":\t", b" :", b""]),
                   st.lists(_ALPHABET, max_size=12).map(bytes)).map(b"".join)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.binary(max_size=24) | st.lists(_ALPHABET, max_size=24).map(bytes) | _FIELD,
                max_size=6))  # fmt: skip
def test_any_header_block_parses_as_http_client_parses_it(lines):
    _same(b"".join(line + b"\r\n" for line in lines) + b"\r\n")


def test_ordinary_and_unusual_blocks_parse_alike():
    for raw in (
        b"Host: a\r\nContent-Length: 5\r\nX-A:b  \r\n\r\n",
        b"X:\t\tv \t\r\nY: \tw\r\nZ:\r\n\r\n",  # blanks around values
        b"Host: a\r\n folded\r\nX: y\r\n\r\n",  # obs-fold
        b"Bad Name: v\r\nContent-Length: 9\r\n\r\n",  # not a header: the rest is body
        b"A: b\rContent-Length: 3\r\n\r\n",  # a bare CR splits the line for the email parser
        b"X: a\x85Content-Length: 3\r\n\r\n",  # so does NEL
        b"From me: x\r\n\r\n",
        b": empty\r\n\r\n",
        b"X: 1\n\n",
        b"X: 1\r\n",  # the connection ended inside the headers
        b"A" * 70000 + b"\r\n\r\n",  # a line over http.client's limit
        b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n",  # over its count
    ):
        _same(raw)


def test_the_gateway_still_reads_folded_and_plain_headers(gateway_factory):
    gw = gateway_factory("")
    s = requests.Session()
    r = s.get(gw.url + "/health", headers={"X-Request-Id": "plain-header-id-1"}, timeout=5)
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "plain-header-id-1"
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: folded-\r\n id-0002\r\n"
                     b"Connection: close\r\n\r\n")  # fmt: skip
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert "Traceback" not in gw.log
