"""Who is changing things, and where the changes are recorded: what code that changes
something needs to append its audit record, passed in as one object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from bastion.audit.chain import AuditChain
from bastion.audit.events import AuditEvent, Scalar
from bastion.audit.log import AuditRecord, record

__all__ = ["AuditTrail"]


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """The actor of the changes about to be made, the request they belong to, and the chain
    (with the server's secret) their records are appended to.

    Handlers build one per request, the CLI one per command, automatic components one each::

        trail = AuditTrail(chain, "key:12", request_id="…")
        trail.record(conn, "label.move", "label", "greeting:production", project_id=3,
                     before={"version": 1}, after={"version": 2})
    """

    chain: AuditChain
    actor: str
    request_id: str | None = None

    def record(
        self,
        conn: sa.Connection,
        action: str,
        object_type: str,
        object_id: str,
        *,
        project_id: int | None,
        before: Any = None,
        after: Any = None,
        details: Mapping[str, Scalar] | None = None,
        reason: str | None = None,
    ) -> AuditRecord:
        """Append one record in ``conn``'s transaction (see :func:`bastion.audit.record`)."""
        event = AuditEvent(
            actor=self.actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            project_id=project_id,
            before=before,
            after=after,
            details=details,
            reason=reason,
            request_id=self.request_id,
        )
        return record(conn, event, chain=self.chain)

    def acting_as(self, actor: str) -> AuditTrail:
        """The same trail for another actor."""
        return replace(self, actor=actor)
