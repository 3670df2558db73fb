"""Admin web pages (Chinese UI), served by the backend; no CDN, nothing from another host.

- ``/admin/…``: the back-office web app (``admin/web``: Vue 3, Element Plus, ECharts, built by
  the set-up of ``make run`` / ``make test`` into ``admin/web/dist``, never committed). Its
  hashed assets are cached for good; every other path under ``/admin/`` answers the app's
  ``index.html`` so its router can show the page.
- ``/admin/gate``: the gate page (检票口), a static page of our own script.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from tornado.web import HTTPError

from handlers.base import PageHandler, route

STATIC = Path(__file__).parent / "static"
WEB = Path(__file__).parent / "web" / "dist"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; "
       "frame-ancestors 'none'")


class WebAppHandler(PageHandler):
    """The web app's shell for any of its paths (its router shows the page)."""

    def get(self, path: str = "") -> None:
        index = WEB / "index.html"
        if not index.is_file():
            self.set_status(503)
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish("管理后台尚未构建：请用 make run 启动（它会构建 admin/web）。\n"
                        "The web app is not built: start Keyun with `make run`.\n")
            return
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Security-Policy", CSP)
        self.finish(index.read_bytes())


class WebAssetHandler(PageHandler):
    """Built assets: content-hashed names, so cached for a year."""

    def get(self, name: str) -> None:
        path = (WEB / "assets" / name).resolve()
        if not path.is_file() or (WEB / "assets").resolve() not in path.parents:
            raise HTTPError(404)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.set_header("Content-Type", kind + ("; charset=UTF-8" if kind.startswith("text/")
                                                or kind.endswith("javascript") else ""))
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        self.finish(path.read_bytes())


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
    route("/admin/gate", GatePageHandler),
    route("/admin/assets/{name}", WebAssetHandler),
    route("/admin/", WebAppHandler),
    route("/admin/{path}", WebAppHandler),
]
