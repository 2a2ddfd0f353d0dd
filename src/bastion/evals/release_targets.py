"""Release and route targets of an eval run, as evals sees them: the bundle ``release:REF``
or ``route:NAME@ENV`` resolves to, and the resolver that finds it.

Evals sits below releases, so it does not read the release store itself: whoever plans a run
of a release or route target hands in a :class:`ReleaseResolver`
(:func:`bastion.releases.eval_targets.resolve_release`). A route is resolved to the release
stable on it *now*, and the run records that release's id, so a resumed run and later
comparisons see exactly what was evaluated. Runs of a release are stored under
``release:<id>`` (``release:<id>/<prompt>`` when the release pins several prompts), which is
also the key a ``route:`` reference finds runs by.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

__all__ = ["ReleaseBundle", "ReleaseResolver", "ReleaseTargetError", "ResolvedRelease"]


class ReleaseTargetError(ValueError):
    """An unknown release, route or environment, or a prompt the release does not pin."""


@dataclass(frozen=True, slots=True)
class ReleaseBundle:
    """What an eval run needs of a release: its identity and the bundle it calls with."""

    release_id: str
    name: str
    model: str
    prompts: Mapping[str, int] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    tools: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ResolvedRelease:
    """The release a target means, and the prompt of its bundle to evaluate (None: the
    release pins no prompt and its model is evaluated on the items' input)."""

    release: ReleaseBundle
    prompt: str | None
    version: int | None
    route: str | None = None
    environment: str | None = None

    @property
    def key(self) -> str:
        """The stored target key: ``release:<id>`` or ``release:<id>/<prompt>``."""
        key = f"release:{self.release.release_id}"
        if len(self.release.prompts) > 1 and self.prompt is not None:
            key += f"/{self.prompt}"
        return key


class ReleaseResolver(Protocol):
    """Finds the release ``release`` (id, id prefix or name) or the one stable on ``route`` in
    ``environment``, with the pinned prompt to evaluate (``prompt`` picks one when the release
    pins several); raises :class:`ReleaseTargetError` naming what is unknown."""

    def __call__(
        self,
        conn: sa.Connection,
        project_id: int,
        *,
        release: str | None = None,
        route: str | None = None,
        environment: str | None = None,
        prompt: str | None = None,
    ) -> ResolvedRelease: ...
