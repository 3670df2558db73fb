"""An answer encoded once and served many times: its JSON bytes, its entity tag, and its
gzip form made the first time a client asks for it."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field

from tornado.web import GZipContentEncoding


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
        """The body gzipped at Tornado's level, made once."""
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, mtime=0,
                                          compresslevel=GZipContentEncoding.GZIP_LEVEL)
        return self._gzipped

    @property
    def gzip_etag(self) -> str:
        """The gzip form's own tag: a different representation has a different tag."""
        return self.etag[:-1] + '-gz"'
