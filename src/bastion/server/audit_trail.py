"""The audit trail of a request: its caller as the actor, its request id, the server's chain."""

from __future__ import annotations

import re

from aiohttp import web

from bastion.audit import AuditTrail, system_actor
from bastion.auth import Principal
from bastion.services.state import STATE

__all__ = ["REQUEST_ID", "request_trail", "system_trail"]

REQUEST_ID = web.RequestKey("bastion_request_id", str)
"""The id the response carries as ``x-request-id`` (set by the errors middleware)."""

# A caller may choose its request id; only a plain token is kept in the audit log.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_trail(request: web.Request, principal: Principal) -> AuditTrail:
    """The trail the changes ``principal`` makes in this request are recorded with."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None and not _SAFE_REQUEST_ID.match(request_id):
        request_id = None
    # ``user:NAME`` for a person, ``key:ID`` for an API key.
    return AuditTrail(request.app[STATE].audit, principal.actor, request_id)


def system_trail(request: web.Request, component: str) -> AuditTrail:
    """The trail of a request nobody is known to make yet (a sign-in): ``system:<component>``
    acts until the code recording a change names who did (``AuditTrail.acting_as``)."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None and not _SAFE_REQUEST_ID.match(request_id):
        request_id = None
    return AuditTrail(request.app[STATE].audit, system_actor(component), request_id)
