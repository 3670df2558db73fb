"""Who is acting: roles, the principal carried by an access token, and its scope.

Staff roles are bound to a scope where the domain says so: ``authority`` to an admin
division (GB/T 2260; a province, a city or a county), ``gate``, ``kiosk`` and
``station_staff`` to a station, ``agent`` to an outlet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PASSENGER = "passenger"
AGENT = "agent"
PHONE_AGENT = "phone_agent"
KIOSK = "kiosk"
GATE = "gate"
STATION_STAFF = "station_staff"
OPERATOR = "operator"
FINANCE = "finance"
AUTHORITY = "authority"

ROLES = (PASSENGER, AGENT, PHONE_AGENT, KIOSK, GATE, STATION_STAFF, OPERATOR, FINANCE,
         AUTHORITY)
STAFF_ROLES = tuple(r for r in ROLES if r != PASSENGER)
PARTNER = "partner"  # a third-party platform calling the signed partner API (not staff)
# which scope each staff role needs
ROLE_SCOPE = {AUTHORITY: "region", GATE: "station_id", KIOSK: "station_id",
              STATION_STAFF: "station_id", AGENT: "outlet_id"}


def region_prefix(division: str) -> str:
    """The prefix a GB/T 2260 code shares with its children: 440000→44, 440100→4401."""
    code = division
    while code.endswith("00") and len(code) > 2:
        code = code[:-2]
    return code


@dataclass(frozen=True)
class Principal:
    """The acting user as the access token states it."""

    kind: str  # "staff" or "member"
    id: str
    role: str
    username: str | None = None
    region: str | None = None
    station_id: str | None = None
    outlet_id: str | None = None

    @property
    def is_staff(self) -> bool:
        return self.kind == "staff"

    def in_region(self, division: str | None) -> bool:
        """Whether an admin division lies inside this principal's region (True if unscoped)."""
        if self.region is None:
            return True
        return bool(division) and str(division).startswith(region_prefix(self.region))

    def station_query(self) -> dict[str, Any]:
        """The stations this principal may see, as a filter of ``stations`` (empty when
        unscoped): station roles their station, an authority the stations of its region."""
        query: dict[str, Any] = {}
        if self.station_id:
            query["_id"] = self.station_id
        if self.region:
            query["division"] = {"$regex": "^" + region_prefix(self.region)}
        return query

    @property
    def label(self) -> str:
        """How history entries name the actor: ``member:<id>`` or ``<role>:<id>``."""
        return f"member:{self.id}" if self.role == PASSENGER else f"{self.role}:{self.id}"

    def claims(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Principal:
        return cls(kind=str(claims["kind"]), id=str(claims["sub"]), role=str(claims["role"]),
                   username=claims.get("username"), region=claims.get("region"),
                   station_id=claims.get("station_id"), outlet_id=claims.get("outlet_id"))

    def audit_actor(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in self.claims().items() if k != "kind"}}
