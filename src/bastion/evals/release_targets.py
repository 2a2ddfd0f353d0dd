"""Release and route targets of an eval run: which bundle ``release:REF`` or
``route:NAME@ENV`` means, resolved against the release store before any model call.

A route is resolved to the release stable on it *now* and the run records that release's id,
so a resumed run and later comparisons see exactly what was evaluated. Runs of a release are
stored under ``release:<id>`` (``release:<id>/<prompt>`` when the release pins several
prompts), which is also the key a ``route:`` reference finds runs by.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from bastion.releases import store as releases
from bastion.releases.model import ENVIRONMENTS

__all__ = ["ReleaseTargetError", "ResolvedRelease", "resolve_release"]


class ReleaseTargetError(ValueError):
    """An unknown release, route or environment, or a prompt the release does not pin."""


@dataclass(frozen=True, slots=True)
class ResolvedRelease:
    """The release a target means, and the prompt of its bundle to evaluate (None: the
    release pins no prompt and its model is evaluated on the items' input)."""

    info: releases.ReleaseInfo
    prompt: str | None
    version: int | None
    route: str | None = None
    environment: str | None = None

    @property
    def key(self) -> str:
        """The stored target key: ``release:<id>`` or ``release:<id>/<prompt>``."""
        key = f"release:{self.info.release_id}"
        if len(self.info.spec.prompts) > 1 and self.prompt is not None:
            key += f"/{self.prompt}"
        return key


def _stable_on(conn: sa.Connection, project_id: int, route: str, environment: str) -> str:
    try:
        releases.check_route(route, environment)
    except releases.ReleaseError as exc:
        raise ReleaseTargetError(f"route:{route}@{environment}: {exc}") from None
    routes = releases.list_routes(conn, project_id)
    for state in routes:
        if state.route == route and state.environment == environment:
            return state.release_id
    deployed = sorted(f"{s.route}@{s.environment}" for s in routes)
    raise ReleaseTargetError(
        f"no release is deployed on route {route!r} in {environment}"
        + (f" (deployed: {', '.join(deployed)})" if deployed else " (no route has a release)")
    )


def resolve_release(
    conn: sa.Connection,
    project_id: int,
    *,
    release: str | None = None,
    route: str | None = None,
    environment: str | None = None,
    prompt: str | None = None,
) -> ResolvedRelease:
    """The release ``release`` (id, id prefix or name) or the one stable on ``route`` in
    ``environment``, with the pinned prompt to evaluate (``prompt`` picks one when the
    release pins several).

    Raises:
        ReleaseTargetError: naming the unknown release, route or environment, or listing the
            prompts the release pins.
    """
    if route is not None:
        if environment not in ENVIRONMENTS:
            raise ReleaseTargetError(
                f"route:{route}@{environment}: the environment must be one of "
                f"{', '.join(ENVIRONMENTS)}"
            )
        release = _stable_on(conn, project_id, route, environment)
    if not release:
        raise ReleaseTargetError("release: needs a release id or name")
    try:
        info = releases.get_release(conn, project_id, release)
    except releases.ReleaseError as exc:
        raise ReleaseTargetError(str(exc)) from None
    what = f"release {info.name} ({info.release_id})"
    pinned = dict(info.spec.prompts)
    if prompt is not None:
        if prompt not in pinned:
            listed = ", ".join(sorted(pinned)) if pinned else "none"
            raise ReleaseTargetError(f"{what} does not pin a prompt {prompt!r} (it pins: {listed})")
        return ResolvedRelease(info, prompt, pinned[prompt], route, environment)
    if len(pinned) > 1:
        raise ReleaseTargetError(
            f"{what} pins several prompts ({', '.join(sorted(pinned))}): "
            "give --prompt NAME to choose the one to evaluate"
        )
    if pinned:
        (name, version), *_ = pinned.items()
        return ResolvedRelease(info, name, version, route, environment)
    return ResolvedRelease(info, None, None, route, environment)
