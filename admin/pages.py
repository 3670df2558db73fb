"""Admin web pages (Chinese UI). Served by the backend; no CDN, no third-party assets inline."""

from __future__ import annotations

from pathlib import Path

from handlers.base import PageHandler, route

TEMPLATES = Path(__file__).parent / "templates"


class AdminIndexHandler(PageHandler):
    """The admin landing page: what exists so far and where to sign in."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.render(str(TEMPLATES / "index.html"))


default_handlers = [
    route("/admin/", AdminIndexHandler),
]
