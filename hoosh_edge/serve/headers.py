"""HTTP header blocks parsed without the email package in the common case, for both directions.

``http.client.parse_headers`` (which pywsgi uses for requests, and urllib3 for upstream answers)
hands every header block to the email package's feed parser: 6-7 % of the gateway's Python time
per proxied call (two blocks: the client's request, the upstream's answer). A block of plain ``Name: value`` lines (what HTTP clients and servers
send) is parsed here directly into the same message class, with the same values; anything else
(folded lines, a bare CR, a name with odd characters, a line without a colon) goes to the email
parser exactly as before, so unusual input is treated as it always was, defects and all.
``boot.patch_gevent`` installs ``parse_headers`` in ``http.client``.
"""

from __future__ import annotations

import email.parser
import http.client
import re
from typing import Any, TypeVar

M = TypeVar("M", bound=http.client.HTTPMessage)

MAX_LINE = 65536  # http.client's limits, so a block is refused where it was before
MAX_HEADERS = 100
_END = (b"\r\n", b"\n", b"")
# The email parser's own header test (a token, then a colon) on a whole line with no CR or LF but
# its end, nor any other character some Python's email parser breaks lines at (str.splitlines).
_PLAIN = re.compile(r"[\x21-\x39\x3b-\x7e]+:[^\r\n\x0b\x0c\x1c-\x1e\x85]*\r?\n\Z")


def parse_headers(fp: Any, _class: type[M] = http.client.HTTPMessage) -> M:  # type: ignore[assignment]
    """``http.client.parse_headers``: same limits, same errors, same message."""
    lines = []
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in _END:
            break
    fields = [line.decode("iso-8859-1") for line in lines[:-1]]
    if not all(_PLAIN.match(f) for f in fields):
        text = b"".join(lines).decode("iso-8859-1")
        return email.parser.Parser(_class=_class).parsestr(text)  # type: ignore[return-value]
    msg = _class()
    for field in fields:
        name, value = field.split(":", 1)
        msg.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))  # as the email parser stores it
    return msg


def install() -> None:
    """Make ``http.client`` (so urllib3, requests and pywsgi) parse headers here."""
    http.client.parse_headers = parse_headers  # type: ignore[assignment]
