"""Which adapter speaks to which station: vendor identifier -> factory, chosen by config.

A station document names its system: ``{"vendor": "rest", "base_url": …, "secret": …}``.
Adapters are built once per (vendor, address, secret) and reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.config import STATION_CALL_SECONDS
from server.exchange.adapters.native import NativeExchange
from server.exchange.adapters.rest import RestExchange
from server.exchange.adapters.xml import XmlExchange
from server.exchange.base import StationExchange
from server.exchange.errors import StationUnreachable

Factory = Callable[[dict[str, Any]], StationExchange]


class ExchangeRegistry:
    """Adapters by vendor; ``for_station`` picks the one a station's config names."""

    def __init__(self, native: NativeExchange, *, timeout: float = STATION_CALL_SECONDS
                 ) -> None:
        self.native = native
        self._timeout = timeout
        self._factories: dict[str, Factory] = {
            "rest": lambda cfg: RestExchange(cfg["base_url"], cfg["secret"],
                                             timeout=self._timeout),
            "xml": lambda cfg: XmlExchange(cfg["base_url"], cfg["secret"],
                                           app_id=cfg.get("app_id", "keyun"),
                                           timeout=self._timeout),
        }
        self._cache: dict[tuple[str, str, str], StationExchange] = {}

    def register(self, vendor: str, factory: Factory) -> None:
        self._factories[vendor] = factory

    def for_station(self, station: dict[str, Any]) -> StationExchange:
        system = station.get("system") or {"vendor": "native"}
        vendor = system.get("vendor", "native")
        if vendor == "native":
            return self.native
        if vendor not in self._factories or not system.get("base_url"):
            raise StationUnreachable(detail=f"station {station.get('_id')} has no usable "
                                            f"{vendor} configuration")
        key = (vendor, system["base_url"], system.get("secret", ""))
        if key not in self._cache:
            self._cache[key] = self._factories[vendor](system)
        return self._cache[key]
