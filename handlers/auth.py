"""Sign-in, token refresh and sign-out; who am I."""

from __future__ import annotations

from handlers.base import PUBLIC, SIGNED_IN, ApiHandler, api, route
from server.schema import DATETIME, DIVISION, obj, string

STAFF_LOGIN = obj({"username": string(1, 64), "password": string(1, 256)},
                  ["username", "password"])
REFRESH = obj({"refresh_token": string(1, 256)}, ["refresh_token"])
STAFF = obj({"id": string(), "username": string(), "name": string(), "role": string(),
             "status": string(), "region": DIVISION, "station_id": string(),
             "outlet_id": string()}, ["id", "username", "role", "status"])
TOKENS = obj({"token": string(description="access token (JWT), send as Bearer"),
              "token_type": string(enum=["Bearer"]),
              "expires_in": {"type": "integer", "description": "seconds"},
              "expires_at": DATETIME,
              "refresh_token": string(description="single-use; rotate with /auth/refresh")},
             ["token", "token_type", "expires_in", "refresh_token"])
STAFF_TOKENS = {**TOKENS, "properties": {**TOKENS["properties"], "staff": STAFF},
                "required": [*TOKENS["required"], "staff"]}
ME = obj({"kind": string(enum=["staff", "member"]), "id": string(), "role": string(),
          "username": string(), "region": DIVISION, "station_id": string(),
          "outlet_id": string()}, ["kind", "id", "role"])


class StaffLoginHandler(ApiHandler):
    @api("Staff sign-in with username and password", body=STAFF_LOGIN, response=STAFF_TOKENS,
         tags=("auth",), errors=("INVALID_CREDENTIALS", "ACCOUNT_DISABLED",
                                 "TOO_MANY_ATTEMPTS"))
    async def post(self) -> None:
        self.write_json(await self.services.auth.staff_login(
            self.body["username"], self.body["password"]))


class RefreshHandler(ApiHandler):
    @api("Rotate a refresh token: the next refresh token and a new access token",
         body=REFRESH, response=TOKENS, tags=("auth",),
         errors=("REFRESH_TOKEN_INVALID", "REFRESH_TOKEN_EXPIRED", "REFRESH_TOKEN_REUSED",
                 "ACCOUNT_DISABLED"),
         description="Each refresh token works once. Presenting a used one again revokes "
                     "every token of that sign-in (reuse detection).")
    async def post(self) -> None:
        self.write_json(await self.services.auth.refresh(self.body["refresh_token"]))


class LogoutHandler(ApiHandler):
    @api("Sign out: revoke the sign-in this refresh token belongs to", roles=PUBLIC,
         body=REFRESH, status=204, tags=("auth",), errors=("REFRESH_TOKEN_INVALID",))
    async def post(self) -> None:
        await self.services.auth.logout(self.body["refresh_token"], self.current_user)
        self.write_json(None, 204)


class MeHandler(ApiHandler):
    @api("Who am I: the principal of the access token", roles=SIGNED_IN, response=ME,
         tags=("auth",))
    async def get(self) -> None:
        self.write_json(self.principal.claims())


default_handlers = [
    route("/api/v1/auth/staff", StaffLoginHandler),
    route("/api/v1/auth/refresh", RefreshHandler),
    route("/api/v1/auth/logout", LogoutHandler),
    route("/api/v1/me", MeHandler),
]
