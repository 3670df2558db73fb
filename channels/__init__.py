"""Where we sell: a SalesChannel base and one class per channel, with a registry.

``CHANNELS`` is the province's channel list; the composition root hands it to the services
(as ``server.sales.SalesChannels``) and the API schemas take their enums from it."""

from __future__ import annotations

from channels.base import SalesChannels
from channels.online import App, MiniProgram, Web
from channels.partner import Partner
from channels.staffed import AgentOutlet, Kiosk, PhoneDesk, Window

CHANNELS = SalesChannels([MiniProgram(), App(), Web(), AgentOutlet(), Kiosk(), PhoneDesk(),
                          Window(), Partner()], default_online="web")
