"""Fixtures of the roles and approvals tests."""

from tests.access.support import serve

__all__ = ["serve"]
