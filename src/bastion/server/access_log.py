"""The server's access log, with credentials that travel in URLs left out.

A single sign-on callback carries the authorization code and state in its query string, and
the page a browser came from may carry them in ``Referer``: their values are logged as
``redacted``, the rest of the line as aiohttp writes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

__all__ = ["RedactingAccessLogger", "redact_url"]

_SECRET_PARAMS = re.compile(
    r"(?i)([?&](?:code|state|session_state|id_token|access_token|refresh_token|token|password"
    r"|csrf_token|api_key|key)=)[^&#\s\"]*"
)


def redact_url(text: str) -> str:
    """``text`` with the values of credential-bearing query parameters replaced."""
    return _SECRET_PARAMS.sub(r"\1redacted", text)


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access logger, with :func:`redact_url` applied to every value it logs."""

    def _format_line(
        self, request: BaseRequest, response: StreamResponse, time: float
    ) -> Iterable[tuple[str | tuple[str, str], str]]:
        return [
            (key, redact_url(value) if isinstance(value, str) else value)
            for key, value in super()._format_line(request, response, time)
        ]
