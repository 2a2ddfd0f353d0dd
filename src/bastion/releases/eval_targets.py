"""Resolving an eval run's release and route targets against the release store: handed to
the eval planner as its :class:`~bastion.evals.release_targets.ReleaseResolver`."""

from __future__ import annotations

import sqlalchemy as sa

from bastion.evals.release_targets import ReleaseBundle, ReleaseTargetError, ResolvedRelease
from bastion.names import ENVIRONMENTS
from bastion.releases import store as releases

__all__ = ["bundle_of", "resolve_release"]


def bundle_of(info: releases.ReleaseInfo) -> ReleaseBundle:
    """The part of a stored release an eval run calls with."""
    spec = info.spec
    return ReleaseBundle(
        release_id=info.release_id,
        name=info.name,
        model=spec.model,
        prompts=dict(spec.prompts),
        fallbacks=tuple(spec.fallbacks),
        params=dict(spec.params),
        tools=tuple(spec.tools),
    )


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
    bundle = bundle_of(info)
    what = f"release {info.name} ({info.release_id})"
    pinned = dict(bundle.prompts)
    if prompt is not None:
        if prompt not in pinned:
            listed = ", ".join(sorted(pinned)) if pinned else "none"
            raise ReleaseTargetError(f"{what} does not pin a prompt {prompt!r} (it pins: {listed})")
        return ResolvedRelease(bundle, prompt, pinned[prompt], route, environment)
    if len(pinned) > 1:
        raise ReleaseTargetError(
            f"{what} pins several prompts ({', '.join(sorted(pinned))}): "
            "give --prompt NAME to choose the one to evaluate"
        )
    if pinned:
        (name, version), *_ = pinned.items()
        return ResolvedRelease(bundle, name, version, route, environment)
    return ResolvedRelease(bundle, None, None, route, environment)
