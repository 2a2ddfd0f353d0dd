"""Putting the UI on an aiohttp application (the server calls :func:`install_ui`)."""

from __future__ import annotations

from aiohttp import web

from bastion.ui.assets import STATIC_PREFIX, Assets
from bastion.ui.pages import public
from bastion.ui.registry import routes
from bastion.ui.state import UI, UiHooks, UiState
from bastion.ui.templating import make_environment
from bastion.ui.tree_cache import TreeCache

__all__ = ["install_ui"]


def install_ui(app: web.Application, hooks: UiHooks) -> None:
    """Serve the UI at ``/ui/`` (``/`` redirects there) on ``app``, signing people in with
    ``hooks``. Templates and static files are read here, once."""
    assets = Assets.from_package()
    app[UI] = UiState(
        hooks=hooks,
        templates=make_environment(assets),
        assets=assets,
        trees=TreeCache(),
    )

    async def static(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return request.app[UI].assets.response(info["digest"], info["path"])

    app.router.add_get(
        STATIC_PREFIX + "/{digest:[0-9a-f]{16}}/{path:.+}", public(static, cacheable=True)
    )
    for route in routes():
        app.router.add_route(route.method, route.path, route.handler)
