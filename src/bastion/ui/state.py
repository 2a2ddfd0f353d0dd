"""What the UI holds in a running server, and what it needs from the server layer above it.

The UI sits below the server in the layers, so it cannot import how the server signs people
in; the server hands that in as :class:`UiHooks` when it installs the UI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jinja2
from aiohttp import web

from bastion.auth.sessions import ActiveSession
from bastion.ui.assets import Assets
from bastion.ui.tree_cache import TreeCache

__all__ = ["UI", "SessionLookup", "UiHooks", "UiState"]

# The request's live session and its id; None without a session cookie. Raises
# bastion.auth.AuthError for a cookie that names no live session (401) or when the database
# cannot be read (503).
SessionLookup = Callable[[web.Request], Awaitable[tuple[ActiveSession, str] | None]]


@dataclass(frozen=True, slots=True)
class UiHooks:
    """The server's pieces the UI uses: how a request's browser session is found."""

    session_of: SessionLookup


@dataclass(frozen=True, slots=True)
class UiState:
    """Built once when the UI is installed."""

    hooks: UiHooks
    templates: jinja2.Environment
    assets: Assets
    trees: TreeCache


UI = web.AppKey("bastion_ui", UiState)
