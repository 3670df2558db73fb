"""Passenger sign-in (mini-program, SMS) and frequent passengers."""

from __future__ import annotations

from handlers.auth import TOKENS
from handlers.base import ApiHandler, api, route
from server.schema import DATETIME, PHONE, array, obj, string
from server.security.principal import PASSENGER
from server.vocabulary import ID_TYPES, TICKET_TYPES

MEMBER = obj({"id": string(), "phone": {"type": ["string", "null"],
                                        "description": "masked"},
              "wechat": {"type": "boolean"}, "nickname": string(), "created_at": DATETIME},
             ["id"])
MEMBER_TOKENS = {**TOKENS, "properties": {**TOKENS["properties"], "member": MEMBER},
                 "required": [*TOKENS["required"], "member"]}
WECHAT_LOGIN = obj({"code": string(1, 128, description="from wx.login()")}, ["code"])
SMS_SEND = obj({"phone": PHONE}, ["phone"])
SMS_SENT = obj({"sent": {"type": "boolean"}, "expires_in": {"type": "integer"},
                "retry_after": {"type": "integer"}}, ["sent"])
SMS_LOGIN = obj({"phone": PHONE, "code": string(4, 8)}, ["phone", "code"])
NEW_PASSENGER = obj({"name": string(1, 40), "id_type": string(enum=list(ID_TYPES)),
                     "id_no": string(5, 20), "ticket_type": string(enum=list(TICKET_TYPES)),
                     "phone": PHONE}, ["name", "id_type", "id_no"])
PASSENGER_OUT = obj({"id": string(), "name": string(), "id_type": string(),
                     "id_no": string(description="masked"), "ticket_type": string(),
                     "phone": string(description="masked")},
                    ["id", "name", "id_type", "id_no"])
CLOSED = obj({"closed": {"type": "boolean"},
              "passengers_deleted": {"type": "integer", "minimum": 0}},
             ["closed", "passengers_deleted"])
PASSENGER_LIST = obj({"passengers": array(PASSENGER_OUT)}, ["passengers"])


class WeChatLoginHandler(ApiHandler):
    @api("Mini-program sign-in: exchange a wx.login() code", body=WECHAT_LOGIN,
         response=MEMBER_TOKENS, tags=("auth",),
         errors=("WECHAT_CODE_INVALID", "WECHAT_UNAVAILABLE"))
    async def post(self) -> None:
        self.write_json(await self.services.members.wechat_login(self.body["code"]))


class SmsSendHandler(ApiHandler):
    @api("Send an SMS sign-in code (one a minute, ten a day per phone)", body=SMS_SEND,
         response=SMS_SENT, tags=("auth",),
         errors=("INVALID_PHONE", "SMS_TOO_FREQUENT", "SERVICE_UNAVAILABLE"))
    async def post(self) -> None:
        self.write_json(await self.services.members.sms_send(self.body["phone"]))


class SmsLoginHandler(ApiHandler):
    @api("App sign-in with phone and SMS code (the code works once)", body=SMS_LOGIN,
         response=MEMBER_TOKENS, tags=("auth",), errors=("INVALID_PHONE", "SMS_CODE_INVALID"))
    async def post(self) -> None:
        self.write_json(await self.services.members.sms_login(self.body["phone"],
                                                              self.body["code"]))


class PassengersHandler(ApiHandler):
    @api("My frequent passengers (ID numbers masked)", roles=(PASSENGER,),
         response=PASSENGER_LIST, tags=("members",))
    async def get(self) -> None:
        self.write_json({"passengers": await self.services.members.passengers(
            self.principal.id)})

    @api("Add a frequent passenger (real-name checked)", roles=(PASSENGER,), body=NEW_PASSENGER,
         response=PASSENGER_OUT, status=201, tags=("members",), idempotent=True,
         errors=("INVALID_ID_NUMBER", "INVALID_PHONE", "PASSENGER_EXISTS",
                 "TOO_MANY_PASSENGERS"))
    async def post(self) -> None:
        self.write_json(await self.services.members.add_passenger(self.principal.id,
                                                                  **self.body), 201)


class PassengerHandler(ApiHandler):
    @api("Remove a frequent passenger", roles=(PASSENGER,), status=204, tags=("members",),
         errors=("PASSENGER_NOT_FOUND",))
    async def delete(self, passenger_id: str) -> None:
        await self.services.members.delete_passenger(self.principal.id, passenger_id)
        self.write_json(None, 204)


class MemberMeHandler(ApiHandler):
    @api("My member profile", roles=(PASSENGER,), response=MEMBER, tags=("members",))
    async def get(self) -> None:
        self.write_json(await self.services.members.get(self.principal.id))

    @api("Close my account (注销账号): sign-in, profile and frequent passengers are deleted "
         "and every sign-in ends; trip records are kept as the real-name rules require and "
         "anonymized when their retention ends", roles=(PASSENGER,), response=CLOSED,
         tags=("members",), errors=("ACCOUNT_HAS_OPEN_TRIPS",))
    async def delete(self) -> None:
        self.write_json(await self.services.members.close_account(self.principal))


default_handlers = [
    route("/api/v1/auth/wechat", WeChatLoginHandler),
    route("/api/v1/auth/sms/send", SmsSendHandler),
    route("/api/v1/auth/sms/login", SmsLoginHandler),
    route("/api/v1/me/profile", MemberMeHandler),
    route("/api/v1/me/passengers", PassengersHandler),
    route("/api/v1/me/passengers/{passenger_id}", PassengerHandler),
]
