"""The sales-channel seam: who sells where, what each channel takes, who sees which orders.

Pure units over ``channels`` and the payment registry a sandbox configuration builds."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from channels import CHANNELS
from server.errors import DomainError
from server.security.principal import Principal

MEMBER = Principal("member", "mem_1", "passenger")
AGENT = Principal("staff", "stf_a", "agent", outlet_id="OUT1")
PHONE = Principal("staff", "stf_p", "phone_agent")
KIOSK = Principal("staff", "stf_k", "kiosk", station_id="S1")
WINDOW = Principal("staff", "stf_w", "station_staff", station_id="S1")
OPERATOR = Principal("staff", "stf_o", "operator")
GATE = Principal("staff", "stf_g", "gate", station_id="S1")
PARTNER = Principal("partner", "ptn_1", "partner")


def test_members_pick_an_online_channel_and_staff_sell_on_their_own() -> None:
    assert CHANNELS.selling(MEMBER).identifier == "web"
    assert CHANNELS.selling(MEMBER, "miniapp").identifier == "miniapp"
    with pytest.raises(DomainError) as refused:
        CHANNELS.selling(MEMBER, "window")
    assert refused.value.code == "CHANNEL_NOT_ALLOWED"
    sold = {p.role: CHANNELS.selling(p).identifier
            for p in (AGENT, PHONE, KIOSK, WINDOW, PARTNER)}
    assert sold == {"agent": "agent", "phone_agent": "phone", "kiosk": "kiosk",
                    "station_staff": "window", "partner": "partner"}
    with pytest.raises(DomainError) as named:
        CHANNELS.selling(AGENT, "web")
    assert named.value.code == "UNKNOWN_FIELD"
    for nobody in (OPERATOR, GATE):
        assert CHANNELS.of(nobody) is None
        with pytest.raises(DomainError):
            CHANNELS.selling(nobody)


def test_what_each_seller_sees() -> None:
    scopes: dict[str, dict[str, Any]] = {
        p.role: CHANNELS.selling(p).order_scope(p)
        for p in (MEMBER, AGENT, PHONE, KIOSK, WINDOW, PARTNER)}
    assert scopes == {"passenger": {"member_id": "mem_1"}, "agent": {"outlet_id": "OUT1"},
                      "partner": {"partner_id": "ptn_1"},
                      "phone_agent": {"channel": "phone"}, "kiosk": {"actor.id": "stf_k"},
                      "station_staff": {"station_id": "S1"}}


def test_only_the_window_is_beyond_ticket_sources() -> None:
    assert "window" not in CHANNELS.limited()
    assert set(CHANNELS.limited()) == {c.identifier for c in CHANNELS.all()} - {"window"}


def test_every_method_a_channel_takes_is_a_provider(providers) -> None:
    """With both provider sandboxes configured, a channel advertises nothing unpayable."""
    from server.app import payment_providers
    from server.config import load_settings
    from tests.support import TEST_SECRETS

    settings = load_settings({**TEST_SECRETS, **providers.env})
    db = SimpleNamespace(outlets=None, partners=None, partner_keys=None)
    registry = payment_providers(settings, db)  # type: ignore[arg-type]
    for channel in CHANNELS.all():
        for method in channel.payment_methods:
            assert registry.for_method(method) is not None, (channel.identifier, method)
