"""Every route of the application, walked with every role: people of each role through their
session cookie and CSRF token, keys of each role, and nobody. Each is refused (401 or 403, or
for a web UI page the redirect to sign in) or let through exactly as the route's declaration
and the permission table say. A route without a declaration fails the walk.

Bodies are empty JSON objects: a caller let through may well get a 400 or 404; only being let
through or not is checked.
"""

from __future__ import annotations

import httpx
import pytest

from bastion.auth import Role
from bastion.auth.roles import PersonRole
from bastion.server.app import access_of, declared_access
from bastion.server.route_access import Access, Credentials
from tests.access.support import PEOPLE, Caller, ServerFactory, add_people, key, nobody, person
from tests.conftest import LiveServer

# A value for each path parameter: well-formed and naming nothing that exists, so a caller
# let through changes nothing (a key id no key has, a prompt no project has).
PARAMS = {
    "project": "default",
    "trace_id": "ab" * 16,
    "span_id": "cd" * 8,
    "key_id": "999999",
    "name": "no-such-thing",
    "label": "production",
    "version": "1",
    "run_id": "0" * 32,
    "release": "no-such-release",
    "release_id": "no-such-release",
    "route": "no-such-route",
    "approval_id": "0" * 32,
    "view_id": "999999",
    "session_id": "no-such-session",
    "digest": "0" * 16,
    "path": "none.css",
}
# Walked last: it ends the session it is called with.
LAST = ("POST", "/auth/logout")


def _path(template: str) -> str:
    parts = []
    for part in template.split("/"):
        if part.startswith("{"):
            part = PARAMS[part[1:-1].split(":")[0]]
        parts.append(part)
    return "/".join(parts)


def _routes(server: LiveServer) -> list[tuple[str, str]]:
    """(method, path pattern) of every route but HEAD (aiohttp serves HEAD with the GET's
    handler: checked here)."""
    found = {}
    for route in server.app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else None
        assert canonical is not None, route
        found[(route.method, canonical)] = route.handler
    for (method, path), handler in found.items():
        if method == "HEAD":
            assert found[("GET", path)] is handler, path
    walked = sorted(k for k in found if k[0] != "HEAD")
    walked.remove(LAST)
    return [*walked, LAST]


def _refused(response: httpx.Response, access: Access) -> bool:
    if response.status_code in (401, 403):
        return True
    to_sign_in = response.headers.get("location", "").startswith("/ui/login")
    return access.credentials is Credentials.SESSION and response.status_code == 303 and to_sign_in


@pytest.fixture
def callers(
    serve: ServerFactory,
) -> tuple[LiveServer, list[tuple[Caller, PersonRole | Role | None]]]:
    server = serve()
    add_people(server)
    people = [(person(server, name), role) for name, role in PEOPLE.items() if name != "grace"]
    keys = [(key(server, role), role) for role in Role]
    return server, [*people, *keys, (nobody(server), None)]


def test_every_route_is_declared(live_server: LiveServer) -> None:
    missing = [route for route in _routes(live_server) if access_of(*route) is None]
    assert missing == [], "routes without a declared permission (see bastion.server.route_access)"
    served = set(_routes(live_server))
    assert [route for route in declared_access() if route not in served] == []


def test_every_route_lets_in_exactly_the_roles_the_table_says(
    callers: tuple[LiveServer, list[tuple[Caller, PersonRole | Role | None]]],
) -> None:
    server, everyone = callers
    wrong = []
    for method, template in _routes(server):
        access = access_of(method, template)
        assert access is not None, (method, template)
        path = _path(template)
        body: dict[str, object] | None = None if method == "GET" else {}
        for caller, role in everyone:
            response = caller.call(method, path, body)
            refused = _refused(response, access)
            if refused == access.allows(role):
                wrong.append(
                    f"{method} {template} as {caller.name}: {response.status_code} "
                    f"({'refused' if refused else 'let through'}), declared {access}"
                )
    assert wrong == []


def test_a_viewer_is_refused_every_write(serve: ServerFactory) -> None:
    server = serve()
    add_people(server, {"vic": PersonRole.VIEWER})
    viewer = person(server, "vic")
    writes = []
    for method, template in _routes(server):
        access = access_of(method, template)
        assert access is not None, (method, template)
        if method != "GET" and access.credentials in (Credentials.ANY, Credentials.SESSION):
            writes.append((method, template))
    assert len(writes) >= 20
    answers = {(m, t): viewer.call(m, _path(t), {}).status_code for m, t in writes}
    assert {route: status for route, status in answers.items() if status != 403} == {}
