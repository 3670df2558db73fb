"""One table of error codes: the stable machine code, its HTTP status and its message.

Services raise :class:`DomainError` with a code from :data:`ERRORS`; the API edge turns it into
``{"error": {"code": ..., "message": ..., **details}}`` with the table's status. A code is a
contract with clients: never rename one, add a new one instead.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from server.clock import parse_day, parse_instant

# code -> (HTTP status, default message). 400: the request does not match the OpenAPI
# document (malformed); 422: it does, but what it says is refused (a check character, a rule,
# a combination); 409: the state of things does not allow it now.
ERRORS: dict[str, tuple[int, str]] = {
    # request shape
    "MALFORMED_JSON": (400, "The request body is not valid JSON."),
    "MISSING_FIELD": (400, "A required field is missing."),
    "INVALID_TYPE": (400, "A field has the wrong type."),
    "INVALID_VALUE": (400, "A field has an invalid value."),
    "UNKNOWN_FIELD": (400, "The request has a field this operation does not take."),
    "INVALID_QUERY": (400, "A query parameter is invalid."),
    "CRITERION_REQUIRED": (422, "Say what to look for: an order or ticket number, a phone, an "
                                "ID number or a departure."),
    "ORDER_NOT_ISSUABLE": (409, "Only a paid order not yet issued can be issued again."),
    "TICKET_NOT_STUCK": (409, "This ticket is not in the middle of a refund, void or change."),
    "BODY_TOO_LARGE": (413, "The request body is too large."),
    "UNSUPPORTED_MEDIA_TYPE": (415, "Send the body as application/json."),
    # WebSocket frames (sent as {"type": "error", "code", "message"}; the status is unused)
    "WS_BAD_FRAME": (400, "A frame must be a JSON object with an op."),
    "WS_UNKNOWN_OP": (400, "Unknown op: use auth, subscribe, unsubscribe or ping."),
    "WS_FRAME_TOO_LARGE": (413, "Frames from clients are at most 4 KiB."),
    "WS_TOPIC_INVALID": (400, "A topic is departure:<id>, order:<order_no> or alerts:ops."),
    "WS_TOO_MANY_TOPICS": (429, "Too many topics on one connection; unsubscribe from some."),
    "WS_RATE_LIMITED": (429, "Too many frames; slow down."),
    # routing
    "NOT_FOUND": (404, "No such resource."),
    "METHOD_NOT_ALLOWED": (405, "This method is not allowed on this resource."),
    # authentication and authorization
    "AUTH_REQUIRED": (401, "Sign in first: send Authorization: Bearer <token>."),
    "TOKEN_INVALID": (401, "The access token is invalid."),
    "TOKEN_EXPIRED": (401, "The access token has expired; refresh it."),
    "TOKEN_REVOKED": (401, "This sign-in has ended (the account was closed or disabled, or "
                      "its role changed); sign in again."),
    "INVALID_CREDENTIALS": (401, "Wrong username or password."),
    "SIGNATURE_INVALID": (401, "The request signature does not verify (or the key is unknown "
                               "or revoked): see the partner API's signing rules."),
    "TIMESTAMP_OUT_OF_WINDOW": (401, "X-Keyun-Timestamp is more than 300 seconds from our "
                                     "clock."),
    "NONCE_REUSED": (401, "This X-Keyun-Nonce was used already: each request needs a new one."),
    "ACCOUNT_DISABLED": (403, "This account is disabled."),
    "TOO_MANY_ATTEMPTS": (429, "Too many failed attempts; try again later."),
    "REFRESH_TOKEN_INVALID": (401, "The refresh token is invalid or revoked."),
    "REFRESH_TOKEN_EXPIRED": (401, "The refresh token has expired; sign in again."),
    "REFRESH_TOKEN_REUSED": (401, "This refresh token was already used; all sessions of this "
                                  "sign-in are revoked. Sign in again."),
    "FORBIDDEN": (403, "Your role may not do this."),
    "OUT_OF_SCOPE": (403, "This resource is outside your region or station."),
    # idempotency
    "IDEMPOTENCY_KEY_REUSED": (422, "This Idempotency-Key was used for a different request."),
    "IDEMPOTENCY_IN_PROGRESS": (409, "A request with this Idempotency-Key is still running."),
    # staff administration
    "USERNAME_TAKEN": (409, "A staff account with this username exists."),
    "ACCOUNT_HAS_OPEN_TRIPS": (409, "This account has orders not yet travelled, paid or "
                               "refunded: finish or refund them first, then close it."),
    "SCOPE_REQUIRED": (422, "This role needs a scope (region, station or outlet)."),
    "STATION_NOT_FOUND": (404, "No such station."),
    # seats and stations (the exchange layer)
    "SEAT_TAKEN": (409, "A requested seat is no longer free."),
    "SOLD_OUT": (409, "Not enough seats left on this departure between these stops."),
    "ALLOTMENT_EXHAUSTED": (409, "The seats left are reserved for other sales channels."),
    "QUOTA_EXCEEDED": (409, "This sales channel has sold its quota for this departure."),
    "CHANNEL_NOT_ALLOWED": (403, "This sales channel may not sell this departure."),
    "DEPARTURE_PROXIED": (409, "This departure belongs to a station system: change it there; "
                               "the sync brings the change here."),
    "DEPARTURE_NOT_CHANGEABLE": (409, "The departure's status does not allow this now."),
    "DEPARTURE_TIME_INVALID": (422, "The new departure time must be later than the current "
                                    "one, in the future and on the service date."),
    "VEHICLE_NOT_FOUND": (422, "No such active vehicle."),
    "VEHICLE_TOO_SMALL": (409, "This vehicle has fewer seats than the departure sells."),
    "DRIVER_NOT_FOUND": (422, "No such active driver."),
    "SCHEDULE_NOT_FOUND": (422, "No such active schedule."),
    "DEPARTURE_STOPPED": (409, "This departure is not on sale."),
    "DEPARTURE_NOT_FOUND": (404, "No such departure."),
    "NOT_ON_SALE_ONLINE": (409, "This departure is not on sale online right now."),
    "INVALID_SEGMENT": (422, "The boarding and alighting stops are not in order on this route."),
    "NO_SUCH_SEAT": (422, "This departure has no such seat."),
    "HOLD_NOT_FOUND": (404, "No such seat hold."),
    "HOLD_EXPIRED": (410, "The seat hold has expired; the seats went back on sale."),
    "SALE_NOT_FOUND": (404, "No such sale at the station."),
    "STATION_UNAVAILABLE": (503, "The station's system cannot be reached; try again later."),
    "STATION_TIMEOUT": (504, "The station's system did not answer in time."),
    "STATION_BAD_RESPONSE": (502, "The station's system gave an answer we cannot use."),
    "TICKET_SOURCE_INVALID": (422, "The ticket source settings are inconsistent."),
    # real name and members
    "INVALID_ID_NUMBER": (422, "The ID document number is not valid."),
    "INVALID_PHONE": (400, "Give a mainland mobile number (11 digits starting with 1)."),
    "SMS_TOO_FREQUENT": (429, "A code was sent recently; wait before asking again."),
    "SMS_CODE_INVALID": (401, "The SMS code is wrong or has expired; ask for a new one."),
    "WECHAT_CODE_INVALID": (401, "The WeChat login code is invalid or was already used."),
    "WECHAT_UNAVAILABLE": (503, "WeChat cannot be reached right now; try again."),
    "PASSENGER_NOT_FOUND": (404, "No such frequent passenger."),
    "PASSENGER_EXISTS": (409, "This person is already among your frequent passengers."),
    "TOO_MANY_PASSENGERS": (409, "You have the most frequent passengers allowed."),
    # orders
    "ORDER_NOT_FOUND": (404, "No such order."),
    "TOO_MANY_PASSENGERS_IN_ORDER": (422, "An order has between one and five passengers."),
    "TOO_MANY_CHILDREN": (422, "At most one accompanied child travels free per adult."),
    "DUPLICATE_PASSENGER": (422, "The same person appears twice in this order."),
    "PASSENGER_ALREADY_BOOKED": (409, "This person already has a ticket on this departure."),
    "SALE_CLOSED": (409, "Online sale of this departure has closed."),
    "NO_FARE": (409, "There is no fare between these stops for that ticket type."),
    "SEAT_CHOICE_INCOMPLETE": (422, "Choose a seat for every passenger, or for none."),
    "ORDER_NOT_CANCELLABLE": (409, "Only an unpaid order can be cancelled."),
    "ORDER_STATE_CONFLICT": (409, "The order changed meanwhile; reload it."),
    # tickets after sale
    "TICKET_NOT_FOUND": (404, "No such ticket."),
    "PICKUP_DEADLINE_PASSED": (422, "Too close to departure to pay at pickup: pay now."),
    "PICKUP_CODE_INVALID": (404, "No ticket to pick up here with this code (and ID)."),
    "PAY_LINK_INVALID": (404, "This payment link is not valid any more (the order was paid, "
                              "or its hold lapsed): ask for the booking again."),
    "NO_TICKETS_TODAY": (404, "This ID card has no ticket to pick up at this station today."),
    "PICKUP_NEEDS_ID": (409, "Several tickets have this code: read the passenger's ID card."),
    "ALREADY_PICKED_UP": (409, "This ticket was already picked up."),
    "ALREADY_SIGNED_OFF": (409, "This departure's manifest is already signed off."),
    "TICKET_NOT_VALID": (409, "This ticket cannot board (refunded, voided, changed or used)."),
    "NOT_REFUNDABLE": (409, "This ticket can no longer be refunded."),
    "VOID_WINDOW_PASSED": (409, "Too long since the ticket was issued to void it (废票): "
                                "refund it instead."),
    "WAITLIST_DEPARTURES_MIXED": (422, "A waitlist order's departures are of one route on one "
                                       "day."),
    "WAITLIST_DEADLINE_INVALID": (422, "The waitlist deadline lies between a minute from now and "
                                       "the close of online sale of its last departure."),
    "WAITLIST_SEATS_AVAILABLE": (409, "This departure has seats for you: buy them instead of "
                                      "waiting."),
    "PASSENGER_ALREADY_WAITING": (409, "A passenger of this order is already on the waitlist of "
                                       "one of these departures."),
    "ORDER_NOT_INVOICEABLE": (409, "An invoice is for an order whose tickets were issued and "
                                   "not all refunded in full."),
    "INVOICE_EXISTS": (409, "This order has its invoice already (a refund corrects it by "
                            "itself)."),
    "INVALID_TAX_NUMBER": (422, "A taxpayer number is 15 to 20 digits and capital letters; a "
                                "company needs one."),
    "INVOICE_TITLE_INVALID": (422, "The invoice needs a title (the buyer's name)."),
    "INVOICE_NOT_FOUND": (404, "No such invoice."),
    "EXPORT_NOT_FOUND": (404, "No such export of yours (exports are kept for a day)."),
    "EXPORT_NOT_READY": (409, "The export is still being made; its progress says how far."),
    "EXPORT_FAILED": (409, "The export failed; ask for it again."),
    "EXPORTS_BUSY": (429, "You have exports running; wait for one to finish."),
    "EXPORT_TOO_LARGE": (422, "Too many rows to download at once; ask for an export job "
                              "instead (it shows its progress)."),
    "INVOICE_NOT_ISSUED": (409, "The invoice is not issued yet; look again shortly."),
    "QUOTE_INVALID": (422, "This refund quote cannot be used (see the message)."),
    "QUOTE_EXPIRED": (409, "The refund quote lapsed; ask for a new quote."),
    "REFUND_FEE_CHANGED": (409, "The refund fee changed since the quote; ask for a new quote."),
    "NOT_CHANGEABLE": (409, "This ticket cannot be changed."),
    "CHANGE_FARE_DIFFERS": (409, "A change is possible only to a departure with the same fare."),
    "TICKET_BUSY": (409, "Another operation on this ticket is in progress."),
    # payments
    "PAYMENT_IN_PROGRESS": (409, "A payment of this order is being started; wait a moment "
                                 "and look at the order again."),
    "ORDER_NOT_PAYABLE": (409, "This order cannot be paid (it is not awaiting payment)."),
    "PAYMENT_METHOD_NOT_ALLOWED": (422, "This sales channel does not take that payment method."),
    "PAYMENT_PROVIDER_ERROR": (502, "The payment provider refused or could not be reached."),
    "NOTIFICATION_REJECTED": (401, "The notification could not be verified."),
    "INSUFFICIENT_BALANCE": (409, "The outlet's deposit and credit do not cover this order."),
    "TENDER_TOO_LOW": (422, "The cash tendered is less than the amount due."),
    "OUTLET_NOT_FOUND": (404, "No such agent outlet."),
    "PARTNER_NOT_FOUND": (404, "No such partner."),
    "PARTNER_RATE_LIMITED": (429, "Too many requests from this partner: slow down (see "
                                  "Retry-After)."),
    "PARTNER_QUOTA_EXCEEDED": (409, "This partner has sold its daily ticket quota."),
    "PARTNER_SUSPENDED": (403, "This partner is suspended."),
    "KEY_LIMIT": (409, "A partner has two live keys at most (one new, one being retired): "
                       "revoke the old one first."),
    "KEY_NOT_FOUND": (404, "No such live key of this partner."),
    "OUTLET_EXISTS": (409, "An outlet with this code exists already."),
    "OUTLET_SUSPENDED": (403, "This outlet is suspended: it may not sell."),
    "ROUTE_NOT_SELLABLE": (422, "This outlet may not sell this route."),
    "OUTLET_QUOTA_EXCEEDED": (409, "The outlet's daily ticket quota is used up."),
    "ROUTE_NOT_FOUND": (422, "No such route."),
    # rules
    "RULE_INVALID": (422, "These rules do not make sense together (see the field)."),
    "CLEARING_RULE_INVALID": (422, "This clearing rule would not share every ticket's money "
                                   "out exactly (see the field)."),
    "CLEARING_RULE_PUBLISHED": (409, "This clearing rule version is published already; "
                                     "published versions never change — make a new draft."),
    "SETTLEMENT_DAY_OPEN": (409, "A day is settled once it is over; settle through an "
                                 "earlier day."),
    "STATS_GROUP_INVALID": (422, "Statistics group by day, station, route, carrier, channel "
                                 "or region."),
    "DAY_OUT_OF_RANGE": (422, "Days of statistics and exchanges lie between 2000 and 2099."),
    "FORECAST_TARGET": (422, "Name either a station or a route to forecast, not both."),
    "FORECAST_NO_HISTORY": (422, "Not enough history to forecast this yet (about four months "
                                 "of days are needed)."),
    "MINISTRY_DAY_OPEN": (409, "A day's files go to the ministry once the day is over."),
    "MINISTRY_EXPORT_RUNNING": (409, "This day's files are being built and sent right now; "
                                     "look again in a moment."),
    "STATS_RANGE_INVALID": (422, "The period must run forwards and span at most three years."),
    "SETTLEMENT_RUNNING": (409, "The batch is still running; its payouts are known when it "
                                "is done."),
    "SETTLEMENT_OUT_OF_ORDER": (409, "A later day is settled already; settlement days go "
                                     "forward."),
    "RECONCILIATION_OPEN": (409, "Reconciliation differences of these days are still open; "
                                 "resolve them before settling."),
    "RECONCILIATION_MISSING": (409, "These days' bills or station sales reports are not "
                                    "reconciled yet; reconcile them before settling."),
    "STATION_UNSUPPORTED": (422, "This station's system does not offer that operation."),
    "DIFFERENCE_RESOLVED": (409, "This difference is resolved already."),
    "ADJUSTMENT_ACCOUNT": (422, "A station's difference is adjusted on the settlement entity "
                                "that bears it (account); a provider's on its funds."),
    "NOTHING_TO_ADJUST": (422, "The amounts agree: accept the difference with a note "
                               "instead of adjusting."),
    "RULE_EFFECTIVE_IN_PAST": (422, "A rule version takes effect now or later, never in the "
                                    "past: orders were sold under the rules of their time."),
    # base data and imports
    "RECORD_NOT_FOUND": (404, "No such record (or it is outside your station)."),
    "RECORD_EXISTS": (409, "A record with this code exists already; change it instead."),
    "REFERENCE_NOT_FOUND": (422, "A record this one refers to does not exist."),
    "IF_MATCH_REQUIRED": (428, "Send If-Match with the version you read: a change names "
                               "the version it was made on."),
    "VERSION_MISMATCH": (412, "The record changed since you read it; reload it and make your "
                              "change again."),
    "STOPS_INVALID": (422, "The route's stops are not in order from its origin to its "
                           "destination."),
    "ROUTE_WITHDRAWN": (422, "The route is withdrawn: no schedule or fare may be added to it."),
    "ROUTE_IN_SERVICE": (409, "The route has schedules: its stations cannot be changed, only "
                              "their details (withdraw it and make a new route)."),
    "CARRIER_NOT_ON_ROUTE": (422, "This carrier does not run this route."),
    "FARE_ABOVE_GUIDE": (422, "A fare may not exceed the government guide price."),
    "STATION_FEE_ABOVE_FARE": (422, "The station fee is part of the fare: it cannot exceed "
                                    "the adult fare."),
    "STATION_NOT_ON_ROUTE": (422, "A schedule leaves from a boarding station of its route."),
    "DATE_IN_FUTURE": (422, "This date cannot be in the future."),
    "DISTANCE_INVALID": (422, "Highway kilometres are part of the route's total distance."),
    "IMPORT_UNREADABLE": (422, "The file is not a CSV (UTF-8 or GB18030) or XLSX file with a "
                               "header row."),
    "IMPORT_COLUMNS_MISSING": (422, "The file lacks columns this kind of record needs."),
    "IMPORT_REFUSED": (422, "Some rows are refused (listed in errors): nothing was imported. "
                            "Fix them and import the file again."),
    "DUPLICATE_ROW": (422, "Another row of the file has the same code."),
    "PARTNER_EXISTS": (409, "A partner with this code exists already."),
    "WEBHOOK_URL_INVALID": (422, "The webhook address must be an https URL with a host."),
    "REFUND_NOT_FOUND": (404, "No such refund."),
    "REFUND_NOT_RETRYABLE": (409, "This refund is not waiting for finance (or cannot be sent "
                                  "again: an abnormal refund is resolved by paying it "
                                  "another way)."),
    "DATE_NOT_ON_SALE": (422, "Departures are on sale from today for the days the rules say."),
    "OFFLINE_SCAN_OUT_OF_BUNDLE": (422, "A scan's time lies outside the validity of the offline "
                                        "bundle it was judged with."),
    "CANNOT_CHANGE_OWN_ACCOUNT": (403, "You cannot disable, re-role or re-scope your own "
                                       "account; ask another operator."),
    "STATEMENT_NOT_READY": (409, "Providers publish a day's statement the next morning; ask "
                                 "for an earlier day."),
    # infrastructure
    "SERVICE_UNAVAILABLE": (503, "A backing service is unavailable; try again shortly."),
    "INTERNAL": (500, "Something went wrong on our side. Quote the request id when asking."),
}


class DomainError(Exception):
    """An expected failure with a stable code; details go into the error body."""

    def __init__(self, code: str, message: str | None = None, **details: Any) -> None:
        if code not in ERRORS:
            raise KeyError(f"unknown error code {code!r}: add it to server.errors.ERRORS")
        self.code = code
        self.status, default = ERRORS[code]
        self.message = message or default
        self.details = details
        super().__init__(f"{code}: {self.message}")

    def body(self) -> dict[str, Any]:
        """The JSON error body the API returns."""
        return {"error": {"code": self.code, "message": self.message, **self.details}}


def error_body(code: str, message: str | None = None, **details: Any) -> dict[str, Any]:
    """The error body for a code without raising (used by the edge for HTTP-level errors)."""
    return DomainError(code, message, **details).body()


def calendar_day(text: str, *, code: str, field: str) -> dt.date:
    """A day written YYYY-MM-DD (service days, bill days); anything else is ``code``."""
    day = parse_day(text) if isinstance(text, str) else None
    if day is not None:
        return day
    raise DomainError(code, f"{field} must be a day, YYYY-MM-DD.", field=field)


def aware_time(text: str, *, code: str, message: str, field: str) -> dt.datetime:
    """An RFC 3339 time with its UTC offset (as the API documents ``date-time``); anything
    else (a naive time too) is ``code``."""
    at = parse_instant(text) if isinstance(text, str) else None
    if at is None:
        raise DomainError(code, message, field=field)
    return at
