"""App assembly: the only module that imports every package and wires them together.

Clients are built once by the caller and injected; handlers read services through typed
properties of ``handlers.base.ApiHandler``. Nothing here connects at import time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from tornado.web import Application, URLSpec

from admin import pages as admin_pages
from channels import CHANNELS
from handlers import (
    auth,
    basedata,
    departures,
    desk,
    docs,
    exchange,
    exports,
    finance,
    gate,
    health,
    invoices,
    members,
    monitoring,
    orders,
    outlets,
    partners,
    paylinks,
    payments,
    sandbox,
    staff,
    stations,
    tickets,
    waitlist,
    ws,
)
from handlers import (
    rules as rule_api,
)
from handlers.base import NotFoundHandler, log_request, route
from notify.dispatch import NoticeDispatcher, parse_templates
from notify.hub import Hub
from notify.sms import HttpSmsProvider
from notify.subscribe import WeChatSubscribe
from payments.alipay import Alipay, AlipayConfig
from payments.base import ProviderRegistry
from payments.invoicing import InvoiceProvider
from payments.local import AgentDeposit, BankCard, Cash, PartnerDeposit, PayAtPickup
from payments.reconciliation import Reconciliation
from payments.service import PaymentService
from payments.wechatpay import WeChatPay, WeChatPayConfig
from server.config import Settings
from server.exchange.adapters.native import NativeExchange
from server.exchange.registry import ExchangeRegistry
from server.metrics import Metrics
from server.security.authorizer import RoleAuthorizer
from server.security.pii import PiiVault
from server.security.seals import Seal
from server.security.tokens import AccessTokens
from server.services.alerts import AlertService, OperationsWatch
from server.services.audit import AuditService
from server.services.auth import AuthService
from server.services.basedata import BaseDataService
from server.services.clearing import ClearingRules
from server.services.departures import (
    DepartureChanges,
    DepartureOperations,
    DepartureService,
)
from server.services.events import EventLog
from server.services.exports import ExportService
from server.services.flow import FlowStats
from server.services.forecast import Forecasts
from server.services.gate import GateKeys, GateService
from server.services.geo import GeoViews
from server.services.health import HealthService
from server.services.holds import SeatHolds
from server.services.idempotency import IdempotencyStore
from server.services.invoices import InvoiceService
from server.services.jobs import JobRunner, RecordFailures
from server.services.ledger import Ledger
from server.services.members import MemberService, WeChatLogin
from server.services.ministry import MinistryExchange
from server.services.orders import OrderService
from server.services.outlets import OutletService
from server.services.partners import PartnerService
from server.services.paylinks import PayLinks
from server.services.planning import plan_sale_window
from server.services.privacy import Retention
from server.services.progress import ProgressBoard
from server.services.rules import RuleService
from server.services.search import NetworkCache, SearchService
from server.services.seats import SeatService
from server.services.settlement import Settlement
from server.services.stations import StationService
from server.services.sync import SyncService
from server.services.ticket_sources import TicketSourceService
from server.services.tickets import TicketService
from server.services.waitlist import WaitlistService
from server.services.webhooks import WebhookService
from server.storage.inventory import NativeInventory

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Every service the edge may call, built once per process."""

    auth: AuthService
    audit: AuditService
    health: HealthService
    stations: StationService
    idempotency: IdempotencyStore
    authorizer: RoleAuthorizer
    inventory: NativeInventory
    seats: SeatService
    sync: SyncService
    ticket_sources: TicketSourceService
    departures: DepartureService
    departure_ops: DepartureOperations
    members: MemberService
    rules: RuleService
    search: SearchService
    orders: OrderService
    tickets: TicketService
    waitlist: WaitlistService
    invoices: InvoiceService
    exports: ExportService
    progress: ProgressBoard
    payments: PaymentService
    jobs: JobRunner
    hub: Hub
    gate: GateService
    notices: NoticeDispatcher
    alerts: AlertService
    failures: RecordFailures
    partners: PartnerService
    outlets: OutletService
    basedata: BaseDataService
    paylinks: PayLinks
    clearing: ClearingRules
    ledger: Ledger
    settlement: Settlement
    reconciliation: Reconciliation
    flow: FlowStats
    forecasts: Forecasts
    geo: GeoViews
    ministry: MinistryExchange
    retention: Retention


def connect_mongo(settings: Settings, uri: str) -> AsyncMongoClient[Any]:
    """A MongoDB client: majority writes, tz-aware datetimes, quick failure when down."""
    return AsyncMongoClient(uri, tz_aware=True, w="majority", retryWrites=True,
                            serverSelectionTimeoutMS=5000, connectTimeoutMS=3000,
                            appname="keyun")


def connect_redis(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A Redis client (text replies, bounded timeouts). A burst waits for a pooled
    connection instead of failing, and never opens more than ``max_connections``. A pooled
    connection that Redis dropped (restart, failover) is reconnected and the command sent
    again, twice at most: the seat scripts are keyed by hold / sale id, so a command that
    did reach Redis before the connection broke does no harm when repeated."""
    if urlsplit(url).scheme.endswith("+cluster"):
        return connect_redis_cluster(url, max_connections)  # type: ignore[return-value]
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, socket_timeout=5, socket_connect_timeout=3,
        health_check_interval=30, max_connections=max_connections, timeout=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError])
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class WaitingRedisCluster(RedisCluster):
    """redis-py's cluster client raises MaxConnectionsError when a node's pool is busy (its
    standalone client waits): at a burst — a hot departure's holds all go to one node — that
    would refuse passengers. Here a command waits its turn instead: at most
    ``max_connections`` commands are under way at once, so no node's pool can run out.
    A pipeline takes one turn for all its commands (it uses one connection per node)."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, max_connections=max_connections, **kwargs)
        self._turns = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._turns:
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None
                 ) -> ClusterPipeline:
        return _WaitingPipeline(self, transaction)


class _WaitingPipeline(ClusterPipeline):
    __slots__ = ()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        async with self.cluster_client._turns:  # type: ignore[attr-defined]
            return await super().execute(*args, **kwargs)


def connect_redis_cluster(url: str, max_connections: int = 64) -> RedisCluster:
    """A Redis Cluster client: ``redis+cluster://h1:p1,h2:p2/`` names some nodes to start
    from (the client learns the rest and follows slot moves and failovers). Every key a
    script or transaction touches shares one hash tag, so each stays on one slot; pub/sub
    is the cluster's classic kind, which every node delivers."""
    parts = urlsplit(url)
    nodes = []
    for address in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = address.rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
    return WaitingRedisCluster(
        startup_nodes=nodes, decode_responses=True, socket_timeout=5,
        socket_connect_timeout=3, max_connections=max_connections,
        password=unquote(parts.password) if parts.password else None,
        username=unquote(parts.username) if parts.username else None,
        ssl=parts.scheme.startswith("rediss"),
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))


def build_services(settings: Settings, mongo: AsyncMongoClient[Any],
                   redis: aioredis.Redis) -> Services:
    db: AsyncDatabase[Any] = mongo[settings.mongo_db]
    audit = AuditService(db)
    access = AccessTokens(settings.jwt_secret, settings.access_token_ttl)
    vault = PiiVault.from_config(settings.pii_keys, settings.pii_index_key)
    auth_service = AuthService(db, redis, access, audit, refresh_ttl=settings.refresh_token_ttl,
                               max_failures=settings.login_max_failures,
                               lockout_seconds=settings.login_lockout_seconds)
    network = NetworkCache(db, redis)
    rules = RuleService(db, redis, audit)
    inventory = NativeInventory(db, redis)
    seats = SeatService(db, redis, ExchangeRegistry(NativeExchange(inventory, redis)),
                        EventLog(redis))
    sync = SyncService(db, seats, audit, network, rules)
    sms = HttpSmsProvider(settings.sms_api_base, settings.sms_api_key)
    member_service = MemberService(
        db, redis, vault, auth_service, sms,
        WeChatLogin(settings.wechat_appid, settings.wechat_secret, settings.wechat_api_base),
        audit)
    failures = RecordFailures()
    notices = NoticeDispatcher(
        db, vault, sms,
        WeChatSubscribe(settings.wechat_appid, settings.wechat_secret, settings.wechat_api_base),
        parse_templates(settings.wechat_notice_templates), failures)
    holds = SeatHolds(db, redis, seats, orphan_after=settings.orphan_hold_seconds)
    outlet_service = OutletService(db, audit)
    webhooks = WebhookService(db, vault, allow_loopback_http=settings.sandbox)
    partners = PartnerService(db, redis, vault, audit, allow_loopback_http=settings.sandbox)
    order_service = OrderService(db, redis, holds, seats.events, rules, member_service, vault,
                                 CHANNELS, audit, failures=failures,
                                 outlets=outlet_service, webhooks=webhooks, partners=partners,
                                 network=network)
    alerts = AlertService(db, seats.events)
    payment_service = PaymentService(db, payment_providers(settings, db), order_service,
                                     alerts, audit, failures)
    tickets = TicketService(db, seats, rules, order_service, audit, redis, alerts,
                            Seal(settings.jwt_secret, "refund quotes"), failures)
    waitlist = WaitlistService(db, order_service, seats, rules, CHANNELS, audit, failures)
    invoice_service = InvoiceService(
        db, order_service, rules,
        InvoiceProvider(settings.einvoice_api_base, settings.einvoice_api_key), audit,
        font=Path(settings.invoice_font),
        seller={"name": settings.seller_name, "tax_no": settings.seller_tax_no},
        failures=failures)
    clearing = ClearingRules(db, audit)
    ledger = Ledger(db, clearing, alerts, failures)
    reconciliation = Reconciliation(db, payment_service.providers, ledger, audit,
                                    seats.registry)
    flow = FlowStats(db, rules)
    forecasts = Forecasts(db, alerts, seats.events, settings.peak_warning_percent)
    basedata = BaseDataService(db, vault, audit, network, rules)
    ministry = MinistryExchange(db, basedata, flow, alerts, audit,
                                api_base=settings.ministry_api_base,
                                platform_code=settings.ministry_platform_code,
                                secret=settings.ministry_secret)
    jobs = JobRunner(redis)
    jobs.add("flow-stats", 5.0, flow.run)
    jobs.add("flow-sweep", 600.0, flow.sweep)
    jobs.add("flow-warnings", 900.0, forecasts.warn)
    if settings.ministry_api_base:
        jobs.add("ministry-daily", 900.0, ministry.daily)
        jobs.add("yunzheng-pull", 3600.0, ministry.pull_base_data)
    if settings.seed_demo and settings.demo_history_days:
        jobs.add("demo-history", 3600.0,
                 lambda: _demo_history(db, settings.demo_history_days, forecasts))
    jobs.add("ledger-posting", 2.0, ledger.run)
    jobs.add("ledger-check", 600.0, ledger.check)
    jobs.add("reconciliation-daily", 900.0, reconciliation.daily)
    jobs.add("ticket-recovery", 30.0, tickets.resolve_stuck)
    jobs.add("disruption-refunds", 30.0, tickets.settle_disruptions)
    jobs.add("payment-query", 15.0, payment_service.query_pending)
    jobs.add("refunds", 5.0, payment_service.execute_refunds)
    jobs.add("payment-scrub", 3600.0, payment_service.scrub_old)
    jobs.add("order-expiry", 2.0, order_service.expire_due)
    jobs.add("waitlist", 1.0, waitlist.run)
    jobs.add("invoices", 5.0, invoice_service.send_requested)
    jobs.add("invoice-corrections", 10.0, invoice_service.correct)
    # dated departures of native stations roll forward with the days (proxied: by sync)
    async def plan() -> int:
        return await plan_sale_window(db, (await rules.current()).sale_days)
    jobs.add("departure-planning", 3600.0, plan)
    jobs.add("order-issuing", 10.0, order_service.retry_issuing)
    jobs.add("orphan-holds", 5.0, holds.release_orphans)
    jobs.add("hold-sweeper", 1.0, inventory.sweep)
    jobs.add("station-sync", 30.0, sync.sync_all)
    jobs.add("station-full-sync", 600.0, lambda: sync.sync_all(full=True))
    jobs.add("notices", 2.0, notices.run)
    jobs.add("webhooks", 1.0, webhooks.run)
    jobs.add("operations-watch", 30.0, OperationsWatch(db, alerts).run)
    jobs.add("payment-reminders", 30.0, order_service.warn_expiring)
    retention = Retention(db, order_service.book, member_service, audit,
                          settings.retention_days)
    jobs.add("personal-data-retention", 3600.0, retention.run)
    return Services(
        auth=auth_service,
        audit=audit,
        health=HealthService(mongo, redis),
        stations=StationService(network),
        idempotency=IdempotencyStore(db),
        authorizer=RoleAuthorizer(audit),
        inventory=inventory,
        seats=seats,
        sync=sync,
        ticket_sources=TicketSourceService(db, inventory, audit,
                                           CHANNELS.limited()),
        departures=DepartureService(db, seats),
        departure_ops=DepartureOperations(db, inventory,
                                          DepartureChanges(db, seats.events, rules), audit,
                                          rules, seats),
        rules=rules,
        search=SearchService(db, seats, rules, network),
        members=member_service,
        orders=order_service,
        tickets=tickets,
        waitlist=waitlist,
        invoices=invoice_service,
        exports=ExportService(db, audit),
        progress=ProgressBoard(redis),
        payments=payment_service,
        jobs=jobs,
        hub=Hub(redis),
        gate=GateService(db, vault, GateKeys(db, vault), audit),
        notices=notices,
        alerts=alerts,
        failures=failures,
        partners=partners,
        outlets=outlet_service,
        basedata=basedata,
        clearing=clearing,
        ledger=ledger,
        settlement=Settlement(db, ledger, vault, audit, payment_service.providers.remote()),
        reconciliation=reconciliation,
        flow=flow,
        forecasts=forecasts,
        geo=GeoViews(db, flow, forecasts),
        ministry=ministry,
        retention=retention,
        paylinks=PayLinks(settings.jwt_secret, settings.public_url or
                          f"http://{settings.host}:{settings.port}", order_service, audit),
    )


async def _demo_history(db: AsyncDatabase[Any], days: int, forecasts: Forecasts) -> None:
    """The demo province's passenger-flow history, generated once in the background; the
    day's forecasts and warnings follow it."""
    from devstack import history  # the demo's, not the product's

    if not await history.history_loaded(db):
        await history.load_history(db, days, progress=lambda done, of: log.info(
            "demo history", extra={"fields": {"days": done, "of": of}}))
        await forecasts.warn(force=True)


def payment_providers(settings: Settings, db: AsyncDatabase[Any]) -> ProviderRegistry:
    """Every way to pay: the local ones always, the remote providers this configuration
    has keys for (config picks; code does not change)."""
    registry = ProviderRegistry()
    for local in (AgentDeposit(db), PartnerDeposit(db), Cash(), BankCard(), PayAtPickup()):
        registry.register(local)
    if settings.wechatpay_api_base and settings.wechatpay_private_key_file:
        base = settings.public_url or f"http://{settings.host}:{settings.port}"
        platform_pem = ""  # no public key file: platform-certificate mode (downloaded)
        if settings.wechatpay_platform_public_key_file:
            with open(settings.wechatpay_platform_public_key_file) as platform:
                platform_pem = platform.read()
        with open(settings.wechatpay_private_key_file) as key:
            registry.register(WeChatPay(WeChatPayConfig(
                api_base=settings.wechatpay_api_base, mchid=settings.wechatpay_mchid,
                appid=settings.wechat_appid, app_appid=settings.wechat_app_appid,
                serial_no=settings.wechatpay_serial,
                private_key_pem=key.read(), api_v3_key=settings.wechatpay_api_v3_key,
                platform_serial=settings.wechatpay_platform_serial if platform_pem else "",
                platform_public_key_pem=platform_pem,
                notify_url=f"{base}/api/v1/payments/notify/wechat")))
    if settings.alipay_gateway and settings.alipay_private_key_file:
        base = settings.public_url or f"http://{settings.host}:{settings.port}"
        with open(settings.alipay_private_key_file) as key, \
                open(settings.alipay_public_key_file) as alipay_key:
            registry.register(Alipay(AlipayConfig(
                gateway=settings.alipay_gateway, app_id=settings.alipay_app_id,
                seller_id=settings.alipay_seller_id, app_private_key=key.read().strip(),
                alipay_public_key=alipay_key.read().strip(),
                notify_url=f"{base}/api/v1/payments/notify/alipay")))
    return registry


def api_routes() -> list[URLSpec]:
    """Every JSON route, in match order."""
    return [*health.default_handlers, *auth.default_handlers, *stations.default_handlers,
            *staff.default_handlers, *members.default_handlers, *departures.default_handlers,
            *orders.default_handlers, *waitlist.default_handlers, *tickets.default_handlers,
            *invoices.default_handlers, *exports.default_handlers, *payments.default_handlers,
            *exchange.default_handlers, *gate.default_handlers, *partners.default_handlers,
            *desk.default_handlers, *outlets.default_handlers, *basedata.default_handlers,
            *rule_api.default_handlers, *finance.default_handlers,
            *monitoring.default_handlers, *paylinks.default_handlers, *docs.default_handlers]


def make_app(settings: Settings, mongo: AsyncMongoClient[Any], redis: aioredis.Redis,
             extra_routes: list[URLSpec] | None = None) -> Application:
    """The Tornado Application with clients and services injected through its settings."""
    routes = [*api_routes(), *ws.default_handlers, *admin_pages.default_handlers,
              *paylinks.page_handlers,
              *(extra_routes or [])]
    partner_api = [*partners.partner_handlers,
                   route("/partner/v1/openapi.json", partners.PartnerOpenApiHandler)]
    if settings.sandbox:  # stand-ins for a person's phone; never in production
        routes += sandbox.default_handlers
    services = build_services(settings, mongo, redis)
    metrics = Metrics()
    metrics.watch_record_failures(services.failures.counts)
    services.hub.on_fanout = metrics.ws_fanout.observe
    services.jobs.on_run = metrics.job_ran
    return Application(
        [*routes, *partner_api],
        config=settings,
        services=services,
        metrics=metrics,
        mongo=mongo,
        redis=redis,
        openapi=docs.build_openapi(routes),
        partner_openapi=docs.partner_openapi(partner_api),
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=True,
        xheaders=False,
        websocket_ping_interval=settings.ws_ping_seconds,
        websocket_ping_timeout=settings.ws_ping_seconds,
        websocket_max_message_size=64 * 1024,  # larger: closed (1009); above 4 KiB: error frame
    )
