"""Planning an eval run: everything that can fail before a model is called.

Resolve the dataset version and the target (a registry prompt by label or version, a plain
gateway model, a release or the release stable on a route), build the scorers, and check that
every item has every variable the template and the scorers need. Each problem is an
:class:`EvalSetupError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from bastion.evals import store
from bastion.evals.datasets import DatasetError, Item, check_variables
from bastion.evals.release_targets import ReleaseResolver, ReleaseTargetError, ResolvedRelease
from bastion.evals.scorers.base import ScorerError
from bastion.evals.scorers.registry import ConfiguredScorer, ScorerContext, make_scorer
from bastion.prompts import PromptSpec, PromptSpecError, TemplateError, render

__all__ = [
    "EvalPlan",
    "EvalSetupError",
    "RetryPolicy",
    "RunSummary",
    "Target",
    "TargetKind",
    "parse_target",
    "plan_resume",
    "plan_run",
    "target_release",
]


class EvalSetupError(ValueError):
    """The run cannot start: unknown dataset, prompt, label or scorer type, items lacking
    variables, an unusable target. Nothing was called."""


# -- targets ----------------------------------------------------------------------------------


TargetKind = Literal["prompt", "model", "release", "route"]
TARGET_FORMS = "NAME, NAME@LABEL, NAME:VERSION, model:ALIAS, release:ID|NAME or route:NAME@ENV"


@dataclass(frozen=True, slots=True)
class Target:
    """What to evaluate: a registry prompt (``name`` with ``label`` or ``version``; the newest
    version when neither); with ``kind="model"``, a gateway model alias ``name``; with
    ``kind="release"``, the release ``name`` (id, id prefix or name); with ``kind="route"``, the
    release stable on route ``name`` in ``environment``. ``prompt`` picks the pinned prompt of a
    release that pins several."""

    kind: TargetKind
    name: str
    label: str | None = None
    version: int | None = None
    environment: str | None = None
    prompt: str | None = None

    @property
    def key(self) -> str:
        """``name@label``, ``name:3``, ``name@latest``, ``model:alias``, ``release:ref`` or
        ``route:name@env`` as typed; a planned run is stored under its resolved key
        (:attr:`EvalPlan.target_key`)."""
        if self.kind == "model":
            return f"model:{self.name}"
        if self.kind in ("release", "route"):
            ref = self.name if self.kind == "release" else f"{self.name}@{self.environment}"
            return f"{self.kind}:{ref}"
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.label or 'latest'}"


def parse_target(text: str, *, prompt: str | None = None) -> Target:
    """A target reference: ``model:ALIAS``, ``release:ID`` (or a release name),
    ``route:NAME@ENV``, or a prompt ``name``, ``name@label`` or ``name:VERSION`` (``name:v3``
    too). ``prompt`` picks the pinned prompt of a release or route target."""
    text = text.strip()
    for kind in ("model", "release", "route"):
        if text.startswith(f"{kind}:"):
            return _prefixed(text, kind, prompt)
    if prompt is not None:
        raise EvalSetupError(
            f"{text!r} is a prompt reference: a prompt to choose applies to release: and "
            "route: targets"
        )
    if "@" in text:
        name, _, label = text.partition("@")
        if not name or not label:
            raise EvalSetupError(f"{text!r}: use NAME, NAME@LABEL or NAME:VERSION")
        return Target("prompt", name, label=label)
    if ":" in text:
        name, _, raw = text.partition(":")
        raw = raw.removeprefix("v")
        if not name or not raw.isdigit() or int(raw) < 1:
            raise EvalSetupError(f"{text!r}: use NAME, NAME@LABEL or NAME:VERSION")
        return Target("prompt", name, version=int(raw))
    if not text:
        raise EvalSetupError("an empty prompt name")
    return Target("prompt", text)


def _prefixed(text: str, kind: str, prompt: str | None) -> Target:
    ref = text.partition(":")[2].strip()
    if kind == "model":
        if not ref:
            raise EvalSetupError("model: needs a gateway model alias")
        if prompt is not None:
            raise EvalSetupError(f"{text!r}: a prompt to choose applies to release: and route:")
        return Target("model", ref)
    if kind == "release":
        if not ref:
            raise EvalSetupError("release: needs a release id or name")
        return Target("release", ref, prompt=prompt)
    route, _, environment = ref.partition("@")
    if not route or not environment:
        raise EvalSetupError(f"{text!r}: use route:NAME@ENV (e.g. route:checkout@production)")
    return Target("route", route, environment=environment, prompt=prompt)


@dataclass(frozen=True, slots=True)
class _Resolved:
    target: Target
    key: str  # the stored target key (a release's id for release and route targets)
    description: dict[str, Any]  # stored with the run
    target_hash: str
    model: str
    params: dict[str, Any]
    spec: PromptSpec | None = None
    partials: Mapping[str, PromptSpec] = field(default_factory=dict)
    declared: frozenset[str] = frozenset()  # variables the prompt accepts


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of transient gateway failures: ``attempts`` in all, backoff ``base_delay_s``
    doubling up to ``max_delay_s`` (full jitter), at least ``Retry-After`` but never more than
    ``retry_after_max_s``; ``timeout_s`` bounds one attempt."""

    attempts: int = 4
    base_delay_s: float = 0.25
    max_delay_s: float = 8.0
    retry_after_max_s: float = 30.0
    timeout_s: float = 120.0


@dataclass
class EvalPlan:
    """A run ready to go: nothing in it can fail for want of a variable, a scorer or a prompt.

    ``run_id`` is set by :func:`run_eval` when it records the run (or by :func:`plan_resume`).
    """

    project_id: int
    dataset: store.StoredDataset
    resolved: _Resolved
    scorers: tuple[ConfiguredScorer, ...]
    scorer_specs: tuple[dict[str, Any], ...]
    repeats: int
    run_id: str | None = None
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    kind: store.RunKind = "quality"  # redteam runs are reported and gated apart

    @property
    def target_key(self) -> str:
        return self.resolved.key

    @property
    def params_hash(self) -> str:
        return store.stable_hash(self.resolved.params)


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    status: Literal["completed", "failed"]
    items: int
    repeats: int
    results: int  # (item, repeat) pairs stored in this invocation
    skipped: int  # pairs already stored (resume)
    calls: int  # gateway calls made (retries included)
    cached: int  # pairs answered from the output cache
    errors: int
    wall_s: float
    cost_usd: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    metrics: dict[str, dict[str, float]]  # metric -> {mean, pass_rate, n}

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "repeats": self.repeats,
            "results": self.results,
            "skipped": self.skipped,
            "calls": self.calls,
            "cached": self.cached,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 3),
            "cost_usd": self.cost_usd,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "metrics": self.metrics,
        }


# -- planning -----------------------------------------------------------------------------------


def _resolve_target(
    conn: sa.Connection,
    project_id: int,
    target: Target,
    *,
    model: str | None,
    params: Mapping[str, Any],
    releases: ReleaseResolver | None,
) -> _Resolved:
    if target.kind == "model":
        description: dict[str, Any] = {"kind": "model", "name": target.name, "model": target.name}
        return _Resolved(
            target=target,
            key=target.key,
            description=description,
            target_hash=_model_hash(target.name),
            model=target.name,
            params=dict(params),
        )
    if target.kind in ("release", "route"):
        if model is not None:
            raise EvalSetupError(f"{target.key}: the release decides the model; drop --model")
        return _resolve_release(conn, project_id, target, params, releases)
    found, spec, partials = _load_prompt(
        conn, project_id, target.name, target.label, target.version
    )
    chosen = model or spec.model
    if not chosen:
        raise EvalSetupError(
            f"prompt {target.name!r} v{found.version} names no model: give --model"
        )
    description = {
        "kind": "prompt",
        "name": target.name,
        "label": target.label,
        "version": found.version,
        "content_hash": found.content_hash,
        "model": chosen,
    }
    return _prompt_resolved(target, target.key, description, found, spec, partials, params)


def _model_hash(model: str) -> str:
    # A release without prompts calls its model as a model target does: they share outputs.
    return store.stable_hash({"kind": "model", "name": model, "model": model})


def _load_prompt(
    conn: sa.Connection, project_id: int, name: str, label: str | None, version: int | None
) -> tuple[Any, PromptSpec, dict[str, PromptSpec]]:
    from bastion.prompts import registry

    try:
        found = registry.get(conn, project_id, name, label=label, version=version)
    except registry.RegistryError as exc:
        raise EvalSetupError(str(exc)) from None
    try:
        spec = PromptSpec.from_dict(found.spec)
        partials = {n: PromptSpec.from_dict(s) for n, s in found.partials.items()}
    except PromptSpecError as exc:  # pragma: no cover - the registry validated it
        raise EvalSetupError(f"prompt {name!r} v{found.version}: {exc}") from None
    return found, spec, partials


def _prompt_resolved(
    target: Target,
    key: str,
    description: dict[str, Any],
    found: Any,
    spec: PromptSpec,
    partials: dict[str, PromptSpec],
    params: Mapping[str, Any],
) -> _Resolved:
    """A prompt version ready to render; ``params`` override the prompt's own, and its tools
    and response format apply unless ``params`` set them."""
    chosen = str(description["model"])
    merged = {**dict(spec.params), **dict(params)}
    if spec.tools is not None:
        merged.setdefault("tools", [dict(t) for t in spec.tools])
    if spec.response_format is not None:
        merged.setdefault("response_format", dict(spec.response_format))
    declared: set[str] = set(spec.variables)
    for partial in partials.values():
        declared |= set(partial.variables)
    return _Resolved(
        target=target,
        key=key,
        description=description,
        target_hash=store.stable_hash(
            {"prompt": found.content_hash, "partials": found.partial_versions, "model": chosen}
        ),
        model=chosen,
        params=merged,
        spec=spec,
        partials=partials,
        declared=frozenset(declared),
    )


def target_release(
    conn: sa.Connection, project_id: int, target: Target, releases: ReleaseResolver | None
) -> ResolvedRelease:
    """The release a ``release`` or ``route`` target names, resolved now by ``releases``.

    Raises:
        EvalSetupError: no such release, none deployed where a route target points, or no
            resolver to ask.
    """
    if releases is None:
        raise EvalSetupError(
            f"{target.key}: release and route targets need the release store "
            "(plan the run with a release resolver)"
        )
    try:
        return releases(
            conn,
            project_id,
            release=target.name if target.kind == "release" else None,
            route=target.name if target.kind == "route" else None,
            environment=target.environment,
            prompt=target.prompt,
        )
    except ReleaseTargetError as exc:
        raise EvalSetupError(str(exc)) from None


def _resolve_release(
    conn: sa.Connection,
    project_id: int,
    target: Target,
    params: Mapping[str, Any],
    releases: ReleaseResolver | None,
) -> _Resolved:
    """The release's bundle: its pinned prompt version rendered, its model alias, its params
    over the prompt's defaults (explicit ``params`` over both) and its tools."""
    release = target_release(conn, project_id, target, releases)
    spec = release.release
    bundle: dict[str, Any] = {**dict(spec.params), **dict(params)}
    if spec.tools:
        bundle.setdefault("tools", [dict(t) for t in spec.tools])
    description: dict[str, Any] = {
        "kind": "release",
        "release_id": spec.release_id,
        "release": spec.name,
        "route": release.route,
        "environment": release.environment,
        "prompt": release.prompt,
        "version": release.version,
        "model": spec.model,
        "fallbacks": list(spec.fallbacks),
    }
    if release.prompt is None:
        return _Resolved(
            target=target,
            key=release.key,
            description=description,
            target_hash=_model_hash(spec.model),
            model=spec.model,
            params=bundle,
        )
    found, prompt_spec, partials = _load_prompt(
        conn, project_id, release.prompt, None, release.version
    )
    description["content_hash"] = found.content_hash
    return _prompt_resolved(target, release.key, description, found, prompt_spec, partials, bundle)


def _required_variables(resolved: _Resolved) -> set[str]:
    if resolved.spec is None:
        return set()
    required = {n for n, v in resolved.spec.variables.items() if v.required}
    for partial in resolved.partials.values():
        required |= {
            n
            for n, v in partial.variables.items()
            if v.required and n not in resolved.spec.variables
        }
    return required


def _check_model_items(items: Sequence[Item]) -> None:
    bad = []
    for item in items:
        messages = item.vars.get("messages")
        text = item.vars.get("input")
        if isinstance(text, str) or (isinstance(messages, list) and messages):
            continue
        bad.append(item.id)
    if bad:
        shown = ", ".join(repr(i) for i in bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise EvalSetupError(
            f"{len(bad)} of {len(items)} items have neither an 'input' string nor a 'messages' "
            f"list, which a model target needs: {shown}"
        )


def _build_scorers(
    specs: Sequence[Mapping[str, Any]], context: ScorerContext | None
) -> tuple[ConfiguredScorer, ...]:
    if not specs:
        raise EvalSetupError("no scorers: give at least one --scorer or --scorers FILE")
    built: list[ConfiguredScorer] = []
    for index, spec in enumerate(specs, start=1):
        try:
            scorer = make_scorer(spec, context=context)
        except ScorerError as exc:
            raise EvalSetupError(f"scorer {index}: {exc}") from None
        assert isinstance(scorer, ConfiguredScorer)
        built.append(scorer)
    names = [s.name for s in built]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalSetupError(
            f"two scorers report the metric {dupes[0]!r}: give one of them a 'metric' name"
        )
    return tuple(built)


def _plan(
    conn: sa.Connection,
    project_id: int,
    dataset: store.StoredDataset,
    target: Target,
    scorer_specs: Sequence[Mapping[str, Any]],
    *,
    repeats: int,
    model: str | None,
    params: Mapping[str, Any],
    context: ScorerContext | None,
    releases: ReleaseResolver | None,
) -> EvalPlan:
    if repeats < 1:
        raise EvalSetupError(f"repeats must be at least 1, got {repeats}")
    if not dataset.items:
        raise EvalSetupError(f"dataset {dataset.ref} has no items")
    resolved = _resolve_target(
        conn, project_id, target, model=model, params=params, releases=releases
    )
    scorers = _build_scorers(scorer_specs, context)
    try:
        check_variables(dataset.items, _required_variables(resolved))
        needed: set[str] = set()
        for scorer in scorers:
            needed |= scorer.variables
        if needed:
            check_variables(dataset.items, needed)
    except DatasetError as exc:
        raise EvalSetupError(f"dataset {dataset.ref}: {exc}") from None
    if resolved.spec is None:
        _check_model_items(dataset.items)
    # Render every item now (kept for the calls): a template error surfaces before any call.
    messages: dict[str, list[dict[str, Any]]] = {}
    for item in dataset.items:
        try:
            messages[item.id] = _render(resolved, item)
        except TemplateError as exc:
            raise EvalSetupError(
                f"prompt {resolved.key}: item {item.id!r} does not render: {exc}"
            ) from None
    return EvalPlan(
        project_id=project_id,
        dataset=dataset,
        resolved=resolved,
        scorers=scorers,
        scorer_specs=tuple(dict(s) for s in scorer_specs),
        repeats=repeats,
        messages=messages,
    )


def plan_run(
    engine: sa.Engine,
    project_id: int,
    *,
    dataset: str,
    dataset_version: int | None = None,
    target: Target,
    scorers: Sequence[Mapping[str, Any]],
    repeats: int = 1,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
    context: ScorerContext | None = None,
    releases: ReleaseResolver | None = None,
) -> EvalPlan:
    """Check everything a run needs before any model call. ``releases`` resolves release and
    route targets (:func:`bastion.releases.eval_targets.resolve_release`).

    Raises:
        EvalSetupError: naming what is wrong.
    """
    with engine.connect() as conn:
        try:
            stored = store.get_dataset(conn, project_id, dataset, dataset_version)
        except store.EvalStoreError as exc:
            raise EvalSetupError(str(exc)) from None
        return _plan(
            conn,
            project_id,
            stored,
            target,
            scorers,
            repeats=repeats,
            model=model,
            params=params or {},
            context=context,
            releases=releases,
        )


def plan_resume(
    engine: sa.Engine,
    project_id: int,
    run_id: str,
    *,
    context: ScorerContext | None = None,
    releases: ReleaseResolver | None = None,
) -> EvalPlan:
    """The plan of an earlier run, to finish it: same dataset version, the prompt *version*
    it resolved to (not where its label points now), scorers, params and repeats."""
    with engine.connect() as conn:
        try:
            info = store.get_run(conn, project_id, run_id)
            stored = store.get_dataset(conn, project_id, info.dataset_name, info.dataset_version)
        except store.EvalStoreError as exc:
            raise EvalSetupError(str(exc)) from None
        if info.status == "completed":
            raise EvalSetupError(f"eval run {run_id} is already completed")
        described = info.target
        model: str | None = None
        if described.get("kind") == "model":
            target = Target("model", str(described["name"]))
        elif described.get("kind") == "release":
            # The release it resolved to, not what the route serves now.
            prompt = described.get("prompt")
            target = Target(
                "release", str(described["release_id"]), prompt=str(prompt) if prompt else None
            )
        else:
            target = Target("prompt", str(described["name"]), version=int(described["version"]))
            model = str(described["model"])
        run_params = dict(info.params)
        plan = _plan(
            conn,
            project_id,
            stored,
            target,
            info.scorers,
            repeats=info.repeats,
            model=model,
            params=run_params,
            context=context,
            releases=releases,
        )
    if plan.resolved.target_hash != info.target_hash:
        raise EvalSetupError(f"eval run {run_id}: its target changed since it started")
    plan.run_id = run_id
    plan.kind = info.kind
    return plan


def _render(resolved: _Resolved, item: Item) -> list[dict[str, Any]]:
    if resolved.spec is None:
        messages = item.vars.get("messages")
        if isinstance(messages, list) and messages:
            return [dict(m) for m in messages]
        return [{"role": "user", "content": str(item.vars["input"])}]
    variables = {k: v for k, v in item.vars.items() if k in resolved.declared}
    rendered = render(resolved.spec, variables, resolved.partials)
    if isinstance(rendered, str):
        return [{"role": "user", "content": rendered}]
    return rendered
