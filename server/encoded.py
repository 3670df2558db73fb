"""An answer encoded once and served many times: its JSON bytes, its entity tag, and its
gzip form made the first time a client asks for it."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field

GZIP_MIN_BYTES = 1024  # as Tornado's own compression: smaller answers gain nothing


@dataclass
class Encoded:
    """JSON bytes with their entity tag (a digest of the bytes)."""

    body: bytes
    etag: str
    _gzipped: bytes | None = field(default=None, repr=False)

    @classmethod
    def of(cls, body: bytes) -> Encoded:
        return cls(body, f'"{hashlib.sha1(body, usedforsecurity=False).hexdigest()}"')

    def gzipped(self) -> bytes:
        """The body gzipped (level 6, as Tornado compresses), made once."""
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
        return self._gzipped

    @property
    def gzip_etag(self) -> str:
        """The gzip form's own tag: a different representation has a different tag."""
        return self.etag[:-1] + '-gz"'
