"""Interfaces of the outbound notice providers; implementations live in ``notify/`` and are
chosen in ``server.app``."""

from __future__ import annotations

import abc
from typing import Any


class SmsError(Exception):
    """The provider did not accept the message."""


class SmsProvider(abc.ABC):
    """Sends one templated text message."""

    identifier = ""

    @abc.abstractmethod
    async def send(self, phone: str, template: str, params: dict[str, Any]) -> str:
        """Send; returns the provider's message id; SmsError on failure."""
