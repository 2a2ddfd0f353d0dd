"""The web UI on the server: its pages at ``/ui/``, signed in with the browser session."""

from __future__ import annotations

from aiohttp import web

from bastion.server.cookie_auth import session_of
from bastion.ui import UiHooks, install_ui

__all__ = ["install_web_ui"]


def install_web_ui(app: web.Application) -> None:
    """Serve the UI on ``app`` (its pages find the session the way the API does)."""
    install_ui(app, UiHooks(session_of=session_of))
