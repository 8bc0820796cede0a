"""Request headers, parsed for pywsgi without the email package in the common case.

pywsgi hands each request's header block to ``http.client.parse_headers``, i.e. to the email
package's feed parser: about a tenth of the gateway's own CPU time per proxied call. A block of
plain ``Name: value`` lines (what every HTTP client sends) is parsed here directly into the same
message object, with the same values; anything else (folded lines, a bare CR, a name with odd
characters, a line without a colon) goes to the email parser exactly as before, so unusual input
gets the same treatment, defects and all.
"""

from __future__ import annotations

import email.parser
import http.client
import re

from gevent.pywsgi import OldMessage

MAX_LINE = 65536  # http.client's limits, so a block is refused where it was before
MAX_HEADERS = 100
_END = (b"\r\n", b"\n", b"")
# The email parser's own header test (a token, then a colon) on a whole line holding none of the
# characters its line splitting (str.splitlines) breaks at but the final (CR)LF.
_PLAIN = re.compile(r"[\x21-\x39\x3b-\x7e]+:[^\r\n\x0b\x0c\x1c-\x1e\x85]*\r?\n\Z")


def read_headers(fp: object) -> OldMessage:
    """pywsgi's ``MessageClass(rfile, 0)``: the request headers, or a message with a status."""
    lines = []
    try:
        while True:
            line = fp.readline(MAX_LINE + 1)  # type: ignore[attr-defined]
            if len(line) > MAX_LINE:
                raise http.client.LineTooLong("header line")
            lines.append(line)
            if len(lines) > MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
            if line in _END:
                break
    except http.client.LineTooLong:
        msg = OldMessage()
        msg.status = "Line too long"
        return msg
    fields = [line.decode("iso-8859-1") for line in lines[:-1]]
    if not all(_PLAIN.match(f) for f in fields):
        text = b"".join(lines).decode("iso-8859-1")
        return email.parser.Parser(_class=OldMessage).parsestr(text)  # as http.client does
    msg = OldMessage()
    for field in fields:
        name, value = field.split(":", 1)
        msg.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))  # as the email parser stores it
    return msg
