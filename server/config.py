"""Typed settings from the environment and an optional TOML file, validated at start.

Every setting has one environment variable (``KEYUN_<NAME>``) and one key in the optional TOML
file named by ``KEYUN_CONFIG`` (the lower-case name). The environment wins over the file.
A wrong value raises :class:`ConfigError` with one line naming the variable, which the CLI
prints before exiting with status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.security.addresses import Network, is_loopback, parse_networks

STATION_CALL_SECONDS = 5.0  # how long Keyun waits for a station system's answer


class ConfigError(Exception):
    """A setting is missing or has a wrong value; the message names the variable."""


def _parse_int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        try:
            value = int(str(raw).strip(), 10)
        except ValueError:
            raise ValueError(f"must be an integer between {lo} and {hi}, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return text

    return parse


def _parse_optional_uri(*schemes: str) -> Callable[[Any], str | None]:
    def parse(raw: Any) -> str | None:
        text = str(raw).strip()
        if not text:
            return None
        if not text.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
        return text

    return parse


def _parse_str(raw: Any) -> str:
    return str(raw).strip()


def _parse_host(raw: Any) -> str:
    text = str(raw).strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"must be a host name or IP address, got {raw!r}")
    return text


def _parse_db_name(raw: Any) -> str:
    text = str(raw).strip()
    if not text or any(c in text for c in '/\\. "$') or len(text) > 63:
        raise ValueError(f"must be a MongoDB database name (no / \\ . space \" $), got {raw!r}")
    return text


def _parse_secret(raw: Any) -> str:
    text = str(raw).strip()
    if text and len(text) < 32:
        raise ValueError("must be at least 32 characters")
    return text


def _parse_pii_keys(raw: Any) -> str:
    from server.security.pii import PiiKeyError, parse_keys

    text = str(raw).strip()
    if text:
        try:
            parse_keys(text)
        except PiiKeyError as exc:
            raise ValueError(str(exc)) from None
    return text


def _parse_index_key(raw: Any) -> str:
    import base64

    text = str(raw).strip()
    if text:
        try:
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            raise ValueError("must be base64") from None
        if len(key) < 32:
            raise ValueError("must decode to at least 32 bytes")
    return text


def _parse_networks(raw: Any) -> str:
    text = str(raw).strip()
    parse_networks(text)  # ValueError names the bad entry
    return text


def _parse_optional_http(raw: Any) -> str:
    text = str(raw).strip().rstrip("/")
    if text and not text.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return text


def _parse_failpoints(raw: Any) -> str:
    from server.failpoints import parse

    text = str(raw).strip()
    parse(text)  # ValueError names the wrong part
    return text


def _opt(default: Any, parse: Callable[[Any], Any], doc: str) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Everything Keyun reads from its environment; see README "Configuration"."""

    env: str = _opt("development", _parse_choice("development", "production"),
                    "development (embedded stores, sandboxes) or production (strict)")
    host: str = _opt("127.0.0.1", _parse_host, "address the HTTP server binds")
    port: int = _opt(8888, _parse_int(1, 65535), "HTTP port")
    processes: int = _opt(1, _parse_int(1, 64), "server processes sharing the port")
    jobs: bool = _opt(True, _parse_bool,
                      "run the background jobs (expiry, posting, syncs, …) in this process; "
                      "false: serve requests only — keep at least one process with jobs")
    mongo_uri: str | None = _opt(None, _parse_optional_uri("mongodb", "mongodb+srv"),
                                 "MongoDB URI; unset: start the embedded SecantusDB")
    mongo_db: str = _opt("keyun", _parse_db_name, "MongoDB database name")
    redis_url: str | None = _opt(None, _parse_optional_uri("redis", "rediss", "unix",
                                                           "redis+cluster", "rediss+cluster"),
                                 "Redis URL, or redis+cluster://host:port[,host:port…] for "
                                 "a Redis Cluster; unset: start the embedded redis-server")
    data_dir: str = _opt("var", _parse_str, "where embedded servers keep their data")
    jwt_secret: str = _opt("", _parse_secret,
                           "HMAC secret for access tokens (>= 32 chars); dev generates one")
    pii_keys: str = _opt("", _parse_pii_keys,
                         "AES-256 keys for ID numbers and phones, kid:base64[,older…]; "
                         "dev generates one")
    pii_index_key: str = _opt("", _parse_index_key,
                              "HMAC key (base64, 32+ bytes) of the blind index; dev generates")
    wechat_appid: str = _opt("wx-keyun-sandbox", _parse_str, "mini-program appid")
    wechat_app_appid: str = _opt("wx-keyun-app-sandbox", _parse_str,
                                 "mobile app appid (WeChat Open Platform), for APP payments")
    wechat_secret: str = _opt("", _parse_str, "mini-program app secret; dev generates one")
    wechat_api_base: str = _opt("", _parse_optional_http,
                                "WeChat API base URL; unset in development: the sandbox")
    sms_api_base: str = _opt("", _parse_optional_http,
                             "SMS provider base URL; unset in development: the sandbox")
    sms_api_key: str = _opt("", _parse_str, "SMS provider API key; dev generates one")
    einvoice_api_base: str = _opt("", _parse_optional_http,
                                  "electronic-invoice provider base URL; unset in "
                                  "development: the sandbox")
    einvoice_api_key: str = _opt("", _parse_str,
                                 "electronic-invoice provider API key; dev generates one")
    invoice_font: str = _opt("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
                             _parse_str, "CJK font of invoice PDFs (Debian fonts-noto-cjk)")
    seller_name: str = _opt("客运联网售票平台", _parse_str, "the seller on invoices (销售方)")
    seller_tax_no: str = _opt("91440000000000000K", _parse_str,
                              "the seller's unified social credit code on invoices")
    wechat_notice_templates: str = _opt(
        "ticket_issued=KY-TICKET-ISSUED,refund_done=KY-REFUND-DONE,"
        "departure_changed=KY-DEPARTURE-CHANGED,payment_expiring=KY-PAYMENT-EXPIRING",
        _parse_str, "subscribe-message template id per notice kind, kind=id[,…]")
    ws_ping_seconds: int = _opt(20, _parse_int(1, 600),
                                "WebSocket ping interval; no pong within it closes the socket")
    ws_idle_seconds: int = _opt(120, _parse_int(1, 86400),
                                "a WebSocket watching no topic is closed after this long")
    public_url: str = _opt("", _parse_optional_http,
                           "how providers reach Keyun (notify URLs); default http://host:port")
    wechatpay_api_base: str = _opt("", _parse_optional_http,
                                   "WeChat Pay API base (https://api.mch.weixin.qq.com); "
                                   "unset in development: the sandbox")
    wechatpay_mchid: str = _opt("1900000001", _parse_str, "WeChat Pay merchant id")
    wechatpay_serial: str = _opt("KEYUN-DEV-MERCHANT", _parse_str,
                                 "serial number of the merchant API certificate")
    wechatpay_private_key_file: str = _opt("", _parse_str,
                                           "merchant API private key (PEM file); dev generates")
    wechatpay_api_v3_key: str = _opt("", _parse_str, "APIv3 key (32 characters); dev generates")
    wechatpay_platform_serial: str = _opt("PUB_KEY_ID_0000000000000001", _parse_str,
                                          "WeChat Pay public key id (public-key mode)")
    wechatpay_platform_public_key_file: str = _opt("", _parse_str,
                                                   "WeChat Pay public key (PEM file)")
    alipay_gateway: str = _opt("", _parse_optional_http,
                               "Alipay gateway (https://openapi.alipay.com/gateway.do); "
                               "unset in development: the sandbox")
    alipay_app_id: str = _opt("2021000000000001", _parse_str, "Alipay app id")
    alipay_seller_id: str = _opt("2088000000000001", _parse_str, "Alipay merchant PID")
    alipay_private_key_file: str = _opt("", _parse_str,
                                        "app private key, PKCS#1 base64 body; dev generates")
    alipay_public_key_file: str = _opt("", _parse_str, "Alipay public key, base64 body")
    access_token_ttl: int = _opt(900, _parse_int(60, 3600), "access token lifetime, seconds")
    refresh_token_ttl: int = _opt(30 * 86400, _parse_int(3600, 90 * 86400),
                                  "refresh token lifetime, seconds")
    demo_password: str = _opt("keyun-demo", _parse_str, "password of the demo staff users")
    seed_demo: bool = _opt(True, _parse_bool, "load the demo province on first start")
    ministry_api_base: str = _opt("", _parse_optional_http,
                                  "the ministry's exchange platform and the provincial 运政 "
                                  "system (one base URL); unset in development: the sandbox")
    ministry_platform_code: str = _opt("440000", _parse_str,
                                       "this province's platform code at the ministry")
    ministry_secret: str = _opt("", _parse_str,
                                "shared secret signing the exchange with the ministry; "
                                "dev generates")
    peak_warning_percent: int = _opt(90, _parse_int(50, 200),
                                     "a day forecast at this share of its seats (percent) "
                                     "is a passenger-flow peak warning")
    retention_days: int = _opt(395, _parse_int(366, 3650),
                               "days after travel that passengers' names, ID numbers and "
                               "phones are kept before they are anonymized (the real-name "
                               "rules want a year at least); accounts unused this long close")
    demo_history_days: int = _opt(365, _parse_int(0, 1100),
                                  "days of passenger-flow history generated in the background "
                                  "for the demo province on first start (0: none)")
    sandbox: bool = _opt(True, _parse_bool, "mount /sandbox helpers and start sandboxes")
    station_simulators: bool = _opt(True, _parse_bool,
                                    "start station-system simulators for the demo stations "
                                    "on vendor systems (sandbox)")
    log_level: str = _opt("info", _parse_choice("debug", "info", "warning", "error"),
                          "log level")
    log_format: str = _opt("json", _parse_choice("json", "text"), "log line format")
    slow_callback_ms: int = _opt(0, _parse_int(0, 60_000),
                                 "diagnostic: time every event-loop callback and count (and "
                                 "log) those over this many ms by cause (0: off)")
    trusted_proxies: str = _opt("", _parse_networks,
                                "load balancers whose X-Forwarded-For is believed: IPs or "
                                "networks, comma-separated")
    metrics_scrapers: str = _opt("", _parse_networks,
                                 "who may read /metrics besides loopback: IPs or networks")
    login_max_failures: int = _opt(5, _parse_int(1, 100),
                                   "failed staff logins per user and address before a lockout")
    login_lockout_seconds: int = _opt(900, _parse_int(1, 86400), "lockout duration, seconds")
    orphan_hold_seconds: int = _opt(60, _parse_int(1, 3600),
                                    "a seat hold with no order after this long (its process "
                                    "died mid-sale) is released")
    failpoints: str = _opt("", _parse_failpoints,
                           "tests only: name=pause:seconds[,…] (refused in production)")
    config_file: str = field(default="", metadata={"doc": "the TOML file read, if any"})
    env_explicit: bool = field(default=False,
                               metadata={"doc": "KEYUN_ENV was set, not taken by default"})

    @functools.cached_property
    def trusted_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)

    @functools.cached_property
    def metrics_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.metrics_scrapers)

    @property
    def loopback_only(self) -> bool:
        """True when the server listens on a loopback address only."""
        return is_loopback(self.host)

    def development_reason(self) -> str:
        """Why sandboxes and demo users are allowed ("" when they are not in use)."""
        if not (self.sandbox or self.seed_demo):
            return ""
        if self.env_explicit and self.env == "development":
            return "KEYUN_ENV=development is set"
        return f"the server listens on {self.host} (loopback) only"

    @property
    def embedded(self) -> bool:
        """True when at least one store has to be started as a child process."""
        return self.mongo_uri is None or self.redis_url is None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def setting_fields() -> list[dataclasses.Field[Any]]:
    """The settings that come from environment or file (for validation and the README)."""
    return [f for f in dataclasses.fields(Settings) if "parse" in f.metadata]


def env_name(name: str) -> str:
    return f"KEYUN_{name.upper()}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read, parse and validate settings; raise ConfigError naming the first bad variable."""
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    config_file = environ.get("KEYUN_CONFIG", "").strip()
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                file_values = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"KEYUN_CONFIG: file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"KEYUN_CONFIG: {config_file} is not valid TOML: {exc}") from None
        known = {f.name for f in setting_fields()}
        unknown = sorted(set(file_values) - known)
        if unknown:
            raise ConfigError(f"KEYUN_CONFIG: unknown setting {unknown[0]!r} in {config_file}")

    values: dict[str, Any] = {}
    for f in setting_fields():
        var = env_name(f.name)
        if var in environ:
            raw, origin = environ[var], var
        elif f.name in file_values:
            raw, origin = file_values[f.name], f"{f.name} in {config_file}"
        else:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    if values.get("env") == "production":
        # Production never mounts sandboxes or demo data unless someone asks (and is refused).
        values.setdefault("sandbox", False)
        values.setdefault("seed_demo", False)
        values.setdefault("station_simulators", False)
    settings = Settings(config_file=config_file, env_explicit="env" in values, **values)
    _check_combination(settings)
    return settings


def _check_combination(s: Settings) -> None:
    # The sandboxes hand anyone any phone's SMS code and the demo users have a known
    # password: only on loopback, or when development is asked for by name.
    if not s.env_explicit and not s.loopback_only:
        for name in ("sandbox", "seed_demo"):
            if getattr(s, name):
                raise ConfigError(
                    f"{env_name(name)}: refused while listening on {s.host} without "
                    f"KEYUN_ENV: sandboxes and demo users are for development — set "
                    f"KEYUN_ENV=development to mean it, KEYUN_ENV=production to serve, "
                    f"or {env_name(name)}=false")
    if s.env == "production":
        if s.mongo_uri is None:
            raise ConfigError("KEYUN_MONGO_URI: required when KEYUN_ENV=production")
        if s.redis_url is None:
            raise ConfigError("KEYUN_REDIS_URL: required when KEYUN_ENV=production")
        for name in ("jwt_secret", "pii_keys", "pii_index_key", "wechat_secret",
                     "wechat_api_base", "sms_api_base", "sms_api_key", "einvoice_api_base",
                     "einvoice_api_key"):
            if not getattr(s, name):
                raise ConfigError(f"{env_name(name)}: required when KEYUN_ENV=production")
        if s.ministry_api_base and not s.ministry_secret:
            raise ConfigError("KEYUN_MINISTRY_SECRET: required with KEYUN_MINISTRY_API_BASE")
        if s.sandbox:
            raise ConfigError("KEYUN_SANDBOX: must be false when KEYUN_ENV=production")
        if s.seed_demo:
            raise ConfigError("KEYUN_SEED_DEMO: must be false when KEYUN_ENV=production")
        if s.station_simulators:
            raise ConfigError("KEYUN_STATION_SIMULATORS: must be false when "
                              "KEYUN_ENV=production")
        if s.failpoints:
            raise ConfigError("KEYUN_FAILPOINTS: must be empty when KEYUN_ENV=production")
        # a hold still being answered by a slow station must never be taken for an orphan
        if s.orphan_hold_seconds < 2 * STATION_CALL_SECONDS:
            raise ConfigError(f"KEYUN_ORPHAN_HOLD_SECONDS: at least "
                              f"{2 * STATION_CALL_SECONDS:.0f} when KEYUN_ENV=production (twice "
                              f"the station call timeout)")
