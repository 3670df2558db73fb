"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from handlers.base import ApiHandler, api, route
from server.errors import DomainError
from server.metrics import CONTENT_TYPE
from server.schema import obj
from server.security.addresses import in_networks, is_loopback

_CHECK = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                           "latency_ms": {"type": "number"},
                                           "error": {"type": "string"}}}
HEALTH = obj({"status": {"type": "string", "enum": ["ok"]}}, ["status"])
READY = obj({"status": {"type": "string", "enum": ["ready", "unavailable"]},
             "checks": {"type": "object", "additionalProperties": _CHECK}}, ["status", "checks"])


class HealthzHandler(ApiHandler):
    @api("Liveness: the process serves requests", response=HEALTH, tags=("ops",))
    async def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyzHandler(ApiHandler):
    @api("Readiness: MongoDB and Redis reachable (503 otherwise)", response=READY,
         tags=("ops",), errors=("SERVICE_UNAVAILABLE",))
    async def get(self) -> None:
        ready, checks = await self.services.health.readiness()
        self.write_json({"status": "ready" if ready else "unavailable", "checks": checks},
                        200 if ready else 503)


class MetricsHandler(ApiHandler):
    @api("Prometheus metrics of this process (text format); only to loopback or the "
         "scrapers of KEYUN_METRICS_SCRAPERS (others get a 404)", tags=("ops",),
         content_type="text/plain", errors=("NOT_FOUND",))
    async def get(self) -> None:
        peer = self.request.remote_ip or ""  # the socket's peer: a scraper connects directly
        if not (is_loopback(peer) or in_networks(peer, self.config.metrics_networks)):
            raise DomainError("NOT_FOUND")
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.metrics.render())


default_handlers = [
    route("/healthz", HealthzHandler),
    route("/readyz", ReadyzHandler),
    route("/metrics", MetricsHandler),
]
