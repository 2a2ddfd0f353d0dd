"""Password rules and hashes: weak and common passwords refused with the reason, argon2id."""

from __future__ import annotations

import pytest
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from bastion.auth.passwords import (
    MIN_LENGTH,
    WeakPassword,
    check_strength,
    generate_password,
    hash_password,
    needs_rehash,
    verify_password,
)


@pytest.mark.parametrize(
    ("name", "password", "reason"),
    [
        ("ada", "a" * (MIN_LENGTH - 1), "too short"),
        ("ada", "", "too short"),
        ("ada.lovelace", "ada.lovelace", "is the user name"),
        ("ada.lovelace", "ADA.LOVELACE", "is the user name"),
        ("grace", "my-grace-horse-battery", "contains the user name"),
        ("ada@example.com", "ada@example.com-plus-more", "contains the user name"),
        # The local part of an e-mail name counts too.
        ("hopper@example.com", "rear-admiral-hopper-1906", "contains the user name"),
        ("ada", "x" * 1025, "too long"),
        # In the leaked-password list as they are (case does not help).
        ("ada", "123qweasdzxc", "common password"),
        ("ada", "1Q2W3E4R5T6Y", "common password"),
        ("ada", "qwertyuiop123", "common password"),
        # A common password with digits or symbols around it.
        ("ada", "Dragon2024!!", "common password 'dragon'"),
        ("ada", "!!password1234", "common password"),
        ("ada", "sunshine_1999", "common password 'sunshine'"),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(name: str, password: str, reason: str) -> None:
    with pytest.raises(WeakPassword, match=reason):
        check_strength(name, password)


def test_strong_passwords_pass() -> None:
    for password in ("correct horse battery staple", "tz8#Lq-2Vm@r9Xw", generate_password()):
        check_strength("ada", password)


def test_the_common_list_is_the_maintained_packages_not_a_pasted_one() -> None:
    listed = FREQUENCY_LISTS["passwords"]
    assert len(listed) >= 10_000
    # Every long-enough entry of the package's list is refused: the check reads that list.
    long_ones = [p for p in listed if len(p) >= MIN_LENGTH and "ada" not in p]
    assert len(long_ones) > 100
    for password in long_ones:
        with pytest.raises(WeakPassword, match="common password"):
            check_strength("ada", password)


def test_hashes_are_argon2id_salted_and_verify() -> None:
    first, second = (
        hash_password("correct horse battery staple"),
        hash_password("correct horse battery staple"),
    )
    assert first.startswith("$argon2id$")
    assert first != second  # a fresh salt each time
    assert "correct horse" not in first
    assert verify_password(first, "correct horse battery staple")
    assert not verify_password(first, "correct horse battery stapler")
    assert not verify_password("not a hash", "correct horse battery staple")
    assert not verify_password(first, "x" * 5000)  # bounded work for absurd input
    assert not needs_rehash(first)
    assert needs_rehash("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")


def test_generated_passwords_are_long_random_and_accepted() -> None:
    passwords = {generate_password() for _ in range(20)}
    assert len(passwords) == 20
    for password in passwords:
        assert len(password) == 24
        assert not password.startswith("-")
        check_strength("admin", password)
