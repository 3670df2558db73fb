"""What the HTTP adapters share: one async client, time limits, failures normalized."""

from __future__ import annotations

import socket
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from server.exchange.base import StationExchange
from server.exchange.errors import BadStationResponse, StationTimeout, StationUnreachable


class HttpStationExchange(StationExchange):
    """Base of adapters that speak HTTP to a station system (never blocks the IOLoop)."""

    def __init__(self, base_url: str, secret: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.timeout = timeout
        self._http = AsyncHTTPClient()

    async def send(self, method: str, path: str, *, body: bytes | None = None,
                   headers: dict[str, str] | None = None) -> HTTPResponse:
        """One request; 5xx, refused connections and time-outs become exchange errors.
        4xx responses are returned for the adapter to read in its dialect."""
        request = HTTPRequest(self.base_url + path, method=method, body=body,
                              headers=headers or {}, connect_timeout=self.timeout,
                              request_timeout=self.timeout,
                              allow_nonstandard_methods=True)
        try:
            response = await self._http.fetch(request, raise_error=False)
        except HTTPClientError as exc:  # 599: time-outs and broken streams
            if "Timeout" in str(exc) or "Timeout" in type(exc).__name__:
                raise StationTimeout() from None
            raise StationUnreachable(detail=str(exc)[:200]) from None
        except (ConnectionError, socket.gaierror, OSError) as exc:
            raise StationUnreachable(detail=type(exc).__name__) from None
        except TimeoutError:
            raise StationTimeout() from None
        if response.code == 599:
            if "Timeout" in str(response.error):
                raise StationTimeout()
            raise StationUnreachable(detail=str(response.error)[:200])
        if response.code >= 500:
            raise StationUnreachable(detail=f"HTTP {response.code}")
        return response


def need(mapping: dict[str, Any], key: str, kind: type) -> Any:
    """A field of a station's answer with the expected type, or BadStationResponse."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadStationResponse(detail=f"field {key!r}")
    return value
