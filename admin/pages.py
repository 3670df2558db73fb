"""Admin web pages (Chinese UI). Served by the backend; no CDN, no third-party assets inline."""

from __future__ import annotations

from pathlib import Path

from handlers.base import PageHandler, route

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


class AdminIndexHandler(PageHandler):
    """The admin landing page: what exists so far and where to sign in."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.render(str(TEMPLATES / "index.html"))


class GatePageHandler(PageHandler):
    """The gate page (检票口): sign in, pick a departure, scan; works offline with the signed
    bundle. A static page of our own script talking to /api/v1/gate/*."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; script-src 'unsafe-inline' 'self'; "
                        "style-src 'unsafe-inline' 'self'; media-src 'self' blob:")
        self.finish((STATIC / "gate.html").read_bytes())


default_handlers = [
    route("/admin/", AdminIndexHandler),
    route("/admin/gate", GatePageHandler),
]
