"""Fixtures of the sign-in tests."""

from tests.auth.support import serve

__all__ = ["serve"]
