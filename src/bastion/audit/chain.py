"""How audit records are chained: each record's hash covers its fields and its predecessor's hash.

Two modes, recorded on every record (``hash_mode``):

- ``sha256``: the hash is SHA-256 over the record's canonical JSON. Anyone can recompute it, so
  it shows accidental or careless changes (an edited row, a deleted or reordered one, a
  truncated tail), but someone who can write to the database can rewrite records and recompute
  every hash after them.
- ``hmac-sha256``: the hash is an HMAC-SHA256 keyed with the server's audit secret (the
  environment variable ``audit.secret_env`` names). Without the secret nobody can compute a
  valid hash, so a database writer can delete or truncate records (which verification reports)
  but cannot change one, insert one or rewrite the chain unnoticed.

The secret lives only in :class:`AuditChain` objects built at the edge from
:class:`~bastion.settings.AuditSettings`; it is never stored, logged or shown by ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

import orjson

from bastion.settings import AuditSettings

__all__ = [
    "GENESIS",
    "HMAC_SHA256",
    "MIN_SECRET_CHARS",
    "MODES",
    "SHA256",
    "AuditChain",
    "AuditConfigError",
    "canonical_bytes",
]

SHA256 = "sha256"
HMAC_SHA256 = "hmac-sha256"
MODES = (SHA256, HMAC_SHA256)
GENESIS = "0" * 64  # the "previous hash" of the first record
MIN_SECRET_CHARS = 32
# Separates these hashes from any other use of the same secret or the same bytes.
_DOMAIN = b"bastion-audit-v1\n"


class AuditConfigError(ValueError):
    """The audit secret is configured but missing or too short."""


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers: its fields as JSON with sorted keys."""
    return _DOMAIN + orjson.dumps(dict(fields), option=orjson.OPT_SORT_KEYS)


class AuditChain:
    """The hashing of the audit chain: HMAC-SHA256 with the server's secret, SHA-256 without.

    Build one per process from settings (:meth:`from_settings`) and hand it to whatever writes
    or verifies audit records; it holds the secret so nothing else has to.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: str | None = None) -> None:
        if secret is not None and len(secret) < MIN_SECRET_CHARS:
            raise AuditConfigError(
                f"the audit secret must be at least {MIN_SECRET_CHARS} characters long "
                "(e.g. the output of `openssl rand -hex 32`)"
            )
        self._key = None if secret is None else secret.encode()

    @classmethod
    def from_settings(
        cls, settings: AuditSettings, environ: Mapping[str, str] | None = None
    ) -> AuditChain:
        """The chain ``settings`` configure; the secret is read from the environment variable
        ``settings.secret_env`` names. A variable that is named but unset is an error: the
        server must not fall back to the weaker mode unnoticed."""
        if settings.secret_env is None:
            return cls()
        env = os.environ if environ is None else environ
        secret = env.get(settings.secret_env, "")
        if not secret:
            raise AuditConfigError(
                f"audit.secret_env names the environment variable {settings.secret_env}, "
                "which is not set: set it to the audit secret (at least "
                f"{MIN_SECRET_CHARS} characters), or unset audit.secret_env"
            )
        return cls(secret)

    @property
    def mode(self) -> str:
        """The mode this chain writes records in."""
        return SHA256 if self._key is None else HMAC_SHA256

    def can_check(self, mode: str) -> bool:
        """Whether this chain can compute (and so check) hashes of ``mode``."""
        return mode == SHA256 or (mode == HMAC_SHA256 and self._key is not None)

    def hash(self, fields: Mapping[str, Any], mode: str) -> str:
        """The hash of a record with ``fields`` (everything but the hash) in ``mode``."""
        data = canonical_bytes(fields)
        if mode == SHA256:
            return hashlib.sha256(data).hexdigest()
        if mode == HMAC_SHA256 and self._key is not None:
            return hmac.new(self._key, data, hashlib.sha256).hexdigest()
        raise AuditConfigError(f"cannot compute {mode!r} hashes without the audit secret")

    def matches(self, fields: Mapping[str, Any], mode: str, stored: str) -> bool:
        """Whether ``stored`` is the hash of ``fields`` in ``mode`` (constant-time compare)."""
        return hmac.compare_digest(self.hash(fields, mode), stored)

    def __repr__(self) -> str:
        return f"AuditChain(mode={self.mode!r})"

    def __reduce__(self) -> Any:
        # A chain is never pickled: that would write the secret wherever the bytes go.
        raise TypeError("an AuditChain holds the audit secret and cannot be pickled")
