"""The audit log: an append-only, hash-chained record of every change and automatic decision.

Recording a change is one call in the change's own transaction, so the record commits or rolls
back with it::

    trail = AuditTrail(chain, actor="key:12", request_id=request_id)
    trail.record(conn, "label.move", "label", "greeting:production", project_id=3,
                 before={"version": 1}, after={"version": 2}, reason="hotfix")

or, with an :class:`AuditEvent` built elsewhere, ``record(conn, event, chain=chain)``. The
:class:`AuditChain` is built once per process from settings (``AuditChain.from_settings``) and
holds the optional HMAC secret; the server keeps it on ``AppState.audit``. Automatic decisions
on paths that must not wait for the database go through :class:`SystemAuditWriter`.
Verification (:func:`verify`), reading (:func:`list_records`, :func:`iter_records`) and pruning
(:func:`prune`, :func:`prune_expired`) complete the package.
"""

from bastion.audit.chain import (
    GENESIS,
    HMAC_SHA256,
    SHA256,
    AuditChain,
    AuditConfigError,
)
from bastion.audit.events import AuditEvent, Scalar, digest, system_actor
from bastion.audit.log import AuditError, AuditRecord, ChainHead, read_head, record
from bastion.audit.reading import AuditFilter, AuditPage, iter_records, list_records
from bastion.audit.retention import (
    PruneResult,
    prune,
    prune_before,
    prune_expired,
    retention_cutoff,
)
from bastion.audit.system import SystemAuditWriter
from bastion.audit.trail import AuditTrail
from bastion.audit.verification import Problem, VerifyReport, verify

__all__ = [
    "GENESIS",
    "HMAC_SHA256",
    "SHA256",
    "AuditChain",
    "AuditConfigError",
    "AuditError",
    "AuditEvent",
    "AuditFilter",
    "AuditPage",
    "AuditRecord",
    "AuditTrail",
    "ChainHead",
    "Problem",
    "PruneResult",
    "Scalar",
    "SystemAuditWriter",
    "VerifyReport",
    "digest",
    "iter_records",
    "list_records",
    "prune",
    "prune_before",
    "prune_expired",
    "read_head",
    "record",
    "retention_cutoff",
    "system_actor",
    "verify",
]
