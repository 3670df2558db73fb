"""Who may call what: one swappable authorizer (configured in app.py), role-based by default.
A refusal of a staff member is audited here, whichever layer asked."""

from __future__ import annotations

from server.errors import DomainError
from server.security.principal import Principal
from server.services.audit import AuditService


class RoleAuthorizer:
    """Allows a principal whose role is among the operation's roles."""

    def __init__(self, audit: AuditService) -> None:
        self._audit = audit

    def allows(self, principal: Principal, roles: tuple[str, ...], resource: str) -> bool:
        """Whether ``principal`` may call an operation on ``resource`` open to ``roles``."""
        return principal.role in roles

    async def check(self, principal: Principal, roles: tuple[str, ...], resource: str,
                    method: str) -> None:
        """FORBIDDEN unless allowed; a staff member's refusal goes to the audit trail."""
        if self.allows(principal, roles, resource):
            return
        if principal.is_staff:
            await self._audit.record(principal, "access.denied", target=resource,
                                     outcome="denied", details={"method": method})
        raise DomainError("FORBIDDEN")
