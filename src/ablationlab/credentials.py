"""Credentials never leave in the clear: :func:`redact` is applied to every URI or message that is
written to a file, a log or the report.

The whole user-info part of a URI goes (``https://alice:s3cret@host`` → ``https://***@host``), user name
included: a token is often passed as the user name alone (``https://<token>@host``), and nothing tells
such a user name from a harmless one. Query values whose name says secret (``?token=…``, ``password``,
``key``, ``auth``…) go too.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&][^=&#\s]*(?:pass|secret|token|key|auth|credential)[^=&#\s]*=)[^&#\s]+", re.IGNORECASE
)


def redact(text: str) -> str:
    """``text`` (a URI, or a message containing URIs) with credentials replaced by ``***``:
    ``https://user:pass@host`` -> ``https://***@host``; secret query values (``?token=...``)."""
    text = _USERINFO.sub(r"\g<scheme>***@", str(text))
    return _SECRET_QUERY.sub(r"\g<key>***", text)
