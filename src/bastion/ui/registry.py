"""Every UI route, gathered from the page modules in one place.

A new page module defines ``ROUTES`` (a list of :class:`~bastion.ui.pages.UiRoute`) and is
added to :data:`PAGE_MODULES`; a new navigation section also gets its entry in
:mod:`bastion.ui.nav`. See docs/ui.md.
"""

from __future__ import annotations

from bastion.ui import (
    account_pages,
    dashboards,
    linked_pages,
    saved_views,
    sessions_pages,
    trace_detail,
    traces_list,
)
from bastion.ui.pages import UiRoute

__all__ = ["PAGE_MODULES", "routes"]

PAGE_MODULES = (
    account_pages,
    traces_list,
    trace_detail,
    saved_views,
    linked_pages,
    sessions_pages,
    dashboards,
)


def routes() -> list[UiRoute]:
    """The routes of every page module, in module order."""
    return [route for module in PAGE_MODULES for route in module.ROUTES]
