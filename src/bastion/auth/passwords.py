"""Passwords: argon2id hashes, and the rules a new password must meet.

A password is refused when it is shorter than :data:`MIN_LENGTH`, equal to or containing the
user's name, or a common password. The common passwords are the list that ships with the
``zxcvbn`` package (30,000 passwords most often found in leaks, ranked by frequency): a
maintained package rather than a list pasted here, read lazily the first time a password is
checked. A common password dressed up with digits or symbols at either end
(``Dragon2024!!``) counts as that password.
"""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "MAX_LENGTH",
    "MIN_LENGTH",
    "WeakPassword",
    "check_strength",
    "generate_password",
    "hash_password",
    "needs_rehash",
    "verify_password",
    "waste_a_verification",
]

MIN_LENGTH = 12
# Hashing cost grows with the length: a bound keeps a login request's work bounded.
MAX_LENGTH = 1024
# Characters people add around a common password to pass a rule.
_DECORATION = "0123456789!@#$%^&*()-_=+.,;:?~'\"`[]{}<>/\\| "


class WeakPassword(ValueError):
    """A password that may not be set; the message says why."""


@functools.cache
def _hasher() -> PasswordHasher:
    # argon2-cffi's defaults are RFC 9106's second recommendation: argon2id, 64 MiB, 3 passes.
    return PasswordHasher()


@functools.cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def check_strength(name: str, password: str) -> None:
    """Raise :class:`WeakPassword` naming the reason when ``password`` may not be used."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"the password is too short: use at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"the password is too long: use at most {MAX_LENGTH} characters")
    lowered = password.lower()
    for part in _name_parts(name):
        if part == lowered:
            raise WeakPassword("the password is the user name")
        if part in lowered:
            raise WeakPassword("the password contains the user name")
    common = _common_passwords()
    if lowered in common:
        raise WeakPassword("the password is a common password (found in leaked-password lists)")
    core = lowered.strip(_DECORATION)
    if len(core) >= 4 and core in common:
        raise WeakPassword(
            f"the password is the common password {core!r} with digits or symbols added"
        )


def _name_parts(name: str) -> list[str]:
    """The user name and, for an e-mail address, its local part; parts under 3 characters
    are too short to look for inside a password (only equality counts for them)."""
    lowered = name.lower()
    parts = [lowered]
    local = lowered.partition("@")[0]
    if local != lowered and len(local) >= 3:
        parts.append(local)
    return [p for p in parts if p]


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` in PHC string form (salt and parameters included)."""
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (in constant time for its length)."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher().verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than today's (rehash at next login)."""
    try:
        return _hasher().check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@functools.cache
def _decoy_hash() -> str:
    return _hasher().hash(secrets.token_urlsafe(16))


def waste_a_verification(password: str) -> None:
    """Spend what a verification costs, for a user that does not exist: a login answers in
    the same time whether or not the name is known, so timing does not reveal user names."""
    verify_password(_decoy_hash(), password)


def generate_password() -> str:
    """A random password of 24 URL-safe characters (144 bits), for first owners."""
    while True:
        candidate = secrets.token_urlsafe(18)
        # A leading '-' would read as an option where the password is pasted into a command.
        if not candidate.startswith("-"):
            return candidate
