"""An unexpected exception: a JSON 500 without internals, logged with the request id."""

from __future__ import annotations

import logging

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from handlers.base import ApiHandler, api, route
from server.app import connect_mongo, connect_redis, make_app
from server.config import load_settings
from server.logs import RequestIdFilter
from tests.support import TEST_SECRETS, ApiClient


class BoomHandler(ApiHandler):
    @api("Fails the way a bug would")
    async def get(self) -> None:
        secret_detail = {"password": "hunter2"}
        raise RuntimeError(f"database exploded: {secret_detail}")


@pytest.mark.gen_test
async def test_unexpected_exception_is_a_generic_json_500(stores, seeded, caplog) -> None:
    settings = load_settings({"KEYUN_MONGO_URI": stores.mongo_uri, "KEYUN_MONGO_DB": seeded,
                              "KEYUN_REDIS_URL": stores.redis_url, **TEST_SECRETS})
    mongo, redis = connect_mongo(settings, stores.mongo_uri), connect_redis(stores.redis_url)
    app = make_app(settings, mongo, redis, extra_routes=[route("/boom", BoomHandler)])
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    caplog.handler.addFilter(RequestIdFilter())
    try:
        with caplog.at_level(logging.ERROR, logger="keyun.api"):
            resp = await ApiClient(f"http://127.0.0.1:{sockets[0].getsockname()[1]}").get(
                "/boom", headers={"X-Request-Id": "boom-request-1"})
        assert resp.status == 500
        assert resp.body["error"]["code"] == "INTERNAL"
        assert resp.body["error"]["request_id"] == "boom-request-1"
        assert "exploded" not in resp.text and "hunter2" not in resp.text
        assert "Traceback" not in resp.text
        records = [r for r in caplog.records if r.name == "keyun.api"]
        assert records and records[0].exc_info is not None
        assert records[0].request_id == "boom-request-1"
    finally:
        server.stop()
        await mongo.close()
        await redis.aclose()
