"""Saved views of the traces list: a name for a list URL, kept per person and project.

Saving a view needs a role that may write (member and up); a view is its owner's, listed to
them alone unless shared with the project, and only its owner may delete it. A request that
breaks either rule is refused with a 403 even when forged by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from aiohttp import web

from bastion.auth import Permission
from bastion.store.schema import ui_saved_views, users
from bastion.ui.pages import Page, UiRoute, page
from bastion.ui.trace_params import parse_query_string

__all__ = ["ROUTES", "SavedView", "ViewError", "create_view", "delete_view", "views_for"]

MAX_VIEWS = 200  # per person and project
_NAME_CHARS = 200


class ViewError(ValueError):
    """A view that cannot be saved as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class SavedView:
    id: int
    name: str
    query: str
    shared: bool
    owner_id: int
    owner: str

    def mine(self, user_id: int) -> bool:
        return self.owner_id == user_id


def views_for(conn: sa.Connection, project_id: int, user_id: int) -> list[SavedView]:
    """The person's own views and those shared with the project, by name."""
    v = ui_saved_views.c
    rows = conn.execute(
        sa.select(v.id, v.name, v.query, v.shared, v.user_id, users.c.name)
        .join(users, users.c.id == v.user_id)
        .where(v.project_id == project_id, sa.or_(v.user_id == user_id, v.shared.is_(True)))
        .order_by(v.name, v.id)
        .limit(2 * MAX_VIEWS)
    ).all()
    return [SavedView(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows]


def _check_name(raw: str) -> str:
    name = " ".join(raw.split())
    if not name or len(name) > _NAME_CHARS or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ViewError(f"a view's name is 1-{_NAME_CHARS} printable characters")
    return name


def create_view(
    conn: sa.Connection, project_id: int, user_id: int, name: str, query: str, *, shared: bool
) -> int:
    """Save ``query`` (a traces-list query string, normalised here) as ``name``; its id."""
    name = _check_name(name)
    params, problem = parse_query_string(query)
    if problem is not None:
        raise ViewError(f"cannot save this view: {problem}")
    v = ui_saved_views.c
    mine = sa.and_(v.project_id == project_id, v.user_id == user_id)
    if conn.execute(sa.select(v.id).where(mine, v.name == name)).first() is not None:
        raise ViewError(f"you already have a view named {name!r}")
    count = conn.execute(sa.select(sa.func.count()).where(mine)).scalar_one()
    if count >= MAX_VIEWS:
        raise ViewError(f"you have {MAX_VIEWS} views in this project: delete one first")
    result = conn.execute(
        ui_saved_views.insert().values(
            project_id=project_id,
            user_id=user_id,
            name=name,
            query=params.query_string(cursor=None),
            shared=shared,
            created_at=datetime.now(UTC),
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def delete_view(conn: sa.Connection, project_id: int, user_id: int, view_id: int) -> str:
    """``deleted``, ``missing`` (no such view visible to the person) or ``not_owner``."""
    v = ui_saved_views.c
    row = conn.execute(
        sa.select(v.user_id, v.shared).where(v.project_id == project_id, v.id == view_id)
    ).first()
    if row is None or (row[0] != user_id and not row[1]):
        return "missing"
    if row[0] != user_id:
        return "not_owner"
    conn.execute(ui_saved_views.delete().where(v.id == view_id, v.project_id == project_id))
    return "deleted"


def _back_to_list(p: Page, query: str = "") -> web.Response:
    location = f"{p.base}/traces" + (f"?{query}" if query else "")
    return web.Response(status=303, headers={"Location": location})


async def save(p: Page) -> web.StreamResponse:
    if not p.can(Permission.VIEWS_SAVE):
        return p.error(403, "Your role in this project may only read: it cannot save views.")
    form = await p.request.post()
    name, query = form.get("name"), form.get("query")
    if not isinstance(name, str) or not isinstance(query, str) or len(query) > 4000:
        return p.error(400, "Send the view's name and the list's query.")
    user_id = p.viewer.session.user_id
    shared = form.get("shared") == "on"
    try:
        await p.write(lambda c: create_view(c, p.project_id, user_id, name, query, shared=shared))
    except ViewError as exc:
        return p.error(400, str(exc))
    return _back_to_list(p, parse_query_string(query)[0].query_string(cursor=None))


async def delete(p: Page) -> web.StreamResponse:
    if not p.can(Permission.VIEWS_SAVE):
        return p.error(403, "Your role in this project may only read: it cannot delete views.")
    raw = p.request.match_info["view_id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        return p.error(404, "No such saved view.")
    view_id = int(raw)
    user_id = p.viewer.session.user_id
    outcome = await p.write(lambda c: delete_view(c, p.project_id, user_id, view_id))
    if outcome == "missing":
        return p.error(404, "No such saved view.")
    if outcome == "not_owner":
        return p.error(403, "Only the person who saved a view may delete it.")
    return _back_to_list(p)


ROUTES = [
    UiRoute("POST", "/ui/p/{project}/views", page(save)),
    UiRoute("POST", "/ui/p/{project}/views/{view_id}/delete", page(delete)),
]
