"""The partner API's request signature (SPEC §4b), one implementation for verifying requests
and signing webhooks:

    METHOD \\n PATH \\n CANONICAL_QUERY \\n TIMESTAMP \\n NONCE \\n hex(SHA-256(body))

``CANONICAL_QUERY`` is the query parameters sorted by name (then value), each name and value
percent-encoded (RFC 3986 unreserved characters kept), joined ``name=value`` with ``&``. The
signature is the lowercase hex HMAC-SHA256 of that text with the key's secret.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, quote

WINDOW_SECONDS = 300


def canonical_query(query: str) -> str:
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


def string_to_sign(method: str, path: str, query: str, timestamp: str, nonce: str,
                   body: bytes) -> str:
    return "\n".join([method.upper(), path, canonical_query(query), timestamp, nonce,
                      hashlib.sha256(body).hexdigest()])


def signature(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def matches(secret: str, text: str, given: str) -> bool:
    return hmac.compare_digest(signature(secret, text), given.lower())
