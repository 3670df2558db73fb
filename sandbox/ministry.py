"""Sandbox of the ministry's exchange platform (部级联网售票数据交换平台) and of the
provincial 运政 system, mounted on the provider sandbox.

Every call is signed by the province's platform: headers ``X-Platform-Code``,
``X-Timestamp`` (Unix seconds, within five minutes), ``X-Nonce`` (once) and ``X-Signature``
— hex HMAC-SHA256 under the shared secret of ``code \\n timestamp \\n nonce \\n
sha256(body) hex``. A bad signature is ``401 {"code": "SIGNATURE_INVALID"}``.

- ``POST /ministry/v1/exchange/daily`` — a day's zip (``manifest.json``, its files, and
  ``manifest.sig``: the manifest's own HMAC). Each file is checked against the manifest (its
  SHA-256 and its rows); the answer is a receipt: ``{"code": "0", "receipt_no",
  "received_at", "date", "files": [{"name", "rows"}], "total_rows"}`` — the rows *counted
  here*, which the province reconciles with what it sent — or ``{"code": "MANIFEST_MISMATCH"
  | "BAD_PACKAGE", "message"}`` with 422.
- ``GET /yunzheng/v1/changes/{kind}.csv?since=<ISO time>`` — the 运政 system's base data
  changes of a kind (the Chinese column headers of its files), changed after ``since``.

Controls: ``POST /_sandbox/ministry/miscount`` ``{"file", "delta"}`` (the platform counts a
file wrongly from now on), ``GET /_sandbox/ministry/receipts``, ``POST
/_sandbox/yunzheng/changes`` ``{"kind", "rows": [{header: value}]}`` (the 运政 system records
changes now).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import secrets
import time
import zipfile
from typing import Any

from tornado.web import RequestHandler

from sandbox.providers import Base

SKEW = 300


class MinistryState:
    def __init__(self, platform_code: str, secret: str) -> None:
        self.platform_code = platform_code
        self.secret = secret
        self.nonces: dict[str, float] = {}
        self.receipts: list[dict[str, Any]] = []
        self.miscount: dict[str, int] = {}
        self.changes: dict[str, list[tuple[dt.datetime, dict[str, str]]]] = {}


def signature(secret: str, code: str, timestamp: str, nonce: str, body: bytes) -> str:
    text = "\n".join([code, timestamp, nonce, hashlib.sha256(body).hexdigest()])
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


class Control(Base):
    @property
    def ministry(self) -> MinistryState:
        return self.application.settings["ministry"]  # type: ignore[no-any-return]


class Signed(Control):
    def prepare(self) -> None:
        h = self.request.headers
        code, ts, nonce = (h.get("X-Platform-Code", ""), h.get("X-Timestamp", ""),
                           h.get("X-Nonce", ""))
        state = self.ministry
        now = time.time()
        for seen, at in list(state.nonces.items()):
            if now - at > 2 * SKEW:
                del state.nonces[seen]
        fresh = ts.isdigit() and abs(now - int(ts)) <= SKEW and nonce and \
            nonce not in state.nonces
        expected = signature(state.secret, code, ts, nonce, self.request.body or b"")
        if code != state.platform_code or not fresh or not hmac.compare_digest(
                expected, h.get("X-Signature", "")):
            self.reply({"code": "SIGNATURE_INVALID", "message": "signature, platform code, "
                                                                "timestamp or nonce refused"},
                       401)
            return
        state.nonces[nonce] = now


class DailyHandler(Signed):
    def post(self) -> None:
        state = self.ministry
        try:
            package = zipfile.ZipFile(io.BytesIO(self.request.body))
            manifest_bytes = package.read("manifest.json")
            manifest = json.loads(manifest_bytes)
            sig = package.read("manifest.sig").decode().strip()
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            self.reply({"code": "BAD_PACKAGE", "message": str(exc)}, 422)
            return
        expected = hmac.new(state.secret.encode(), manifest_bytes, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig):
            self.reply({"code": "SIGNATURE_INVALID", "message": "manifest.sig"}, 401)
            return
        files = []
        for entry in manifest.get("files", []):
            try:
                body = package.read(entry["name"])
            except KeyError:
                self.reply({"code": "MANIFEST_MISMATCH", "message": f"{entry['name']} missing"},
                           422)
                return
            if hashlib.sha256(body).hexdigest() != entry.get("sha256"):
                self.reply({"code": "MANIFEST_MISMATCH",
                            "message": f"{entry['name']}: SHA-256 differs"}, 422)
                return
            rows = max(0, sum(1 for _ in csv.reader(io.StringIO(body.decode("utf-8")))) - 1)
            files.append({"name": entry["name"],
                          "rows": rows + state.miscount.get(entry["name"], 0)})
        receipt = {"code": "0", "receipt_no": "MR" + secrets.token_hex(6).upper(),
                   "received_at": dt.datetime.now(dt.UTC).isoformat(),
                   "date": manifest.get("date"), "files": files,
                   "total_rows": sum(f["rows"] for f in files)}
        state.receipts.append(receipt)
        self.reply(receipt)


class ChangesHandler(Signed):
    def get(self, kind: str) -> None:
        since_text = self.get_argument("since", "")
        try:
            since = dt.datetime.fromisoformat(since_text) if since_text else None
        except ValueError:
            self.reply({"code": "BAD_REQUEST", "message": "since"}, 400)
            return
        rows = [row for at, row in self.ministry.changes.get(kind, [])
                if since is None or at > since]
        headers: list[str] = []
        for row in rows:
            headers += [h for h in row if h not in headers]
        out = io.StringIO()
        writer = csv.writer(out)
        if rows:
            writer.writerow(headers)
            writer.writerows([[row.get(h, "") for h in headers] for row in rows])
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header("X-Changes-Until", dt.datetime.now(dt.UTC).isoformat())
        self.finish(out.getvalue().encode())


class MiscountHandler(Control):
    def post(self) -> None:
        body = json.loads(self.request.body or b"{}")
        self.ministry.miscount[str(body["file"])] = int(body.get("delta", 0))
        self.reply({"ok": True})


class ReceiptsHandler(Control):
    def get(self) -> None:
        self.reply({"receipts": self.ministry.receipts})


class RecordChangesHandler(Control):
    def post(self) -> None:
        body = json.loads(self.request.body or b"{}")
        at = dt.datetime.now(dt.UTC)
        kept = self.ministry.changes.setdefault(str(body["kind"]), [])
        kept += [(at, {str(k): str(v) for k, v in row.items()}) for row in body["rows"]]
        self.reply({"recorded": len(body["rows"]), "at": at.isoformat()})


def ministry_routes() -> list[tuple[str, type[RequestHandler]]]:
    return [(r"/ministry/v1/exchange/daily", DailyHandler),
            (r"/yunzheng/v1/changes/([a-z_]+)\.csv", ChangesHandler),
            (r"/_sandbox/ministry/miscount", MiscountHandler),
            (r"/_sandbox/ministry/receipts", ReceiptsHandler),
            (r"/_sandbox/yunzheng/changes", RecordChangesHandler)]
