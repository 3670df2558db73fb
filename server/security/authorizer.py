"""Who may call what: one swappable authorizer (configured in app.py), role-based by default."""

from __future__ import annotations

from server.security.principal import Principal


class RoleAuthorizer:
    """Allows a principal whose role is among the operation's roles."""

    def allows(self, principal: Principal, roles: tuple[str, ...], resource: str) -> bool:
        """Whether ``principal`` may call an operation on ``resource`` open to ``roles``."""
        return principal.role in roles
