"""uvicorn's HTTP protocol, answering a request it cannot parse with the JSON error body."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from echotune.common.error_body import error_body

UNREADABLE = json.dumps(
    error_body(
        "invalid_http",
        "the request is not valid HTTP: a URL over 64 KB, or a malformed request line, header "
        "or body",
    )
).encode()
HTTP = "echotune.web.protocol:JsonErrorsHttpTools"
"""uvicorn's ``--http`` for every service that speaks the JSON error body."""


class JsonErrorsHttpTools(HttpToolsProtocol):
    """uvicorn answers what ``httptools`` refuses (a URL longer than its 16-bit offsets allow
    among them) with ``400 Invalid HTTP request received.`` as text; here with JSON."""

    def send_400_response(self, msg: str) -> None:
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(UNREADABLE),
                b"connection: close\r\n\r\n",
                UNREADABLE,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
