"""The analysis controller: a server background task that steps, promotes or rolls back.

Every ``releases.analysis_interval_s`` it lists the running rollouts. For each it first takes
(or renews) the rollout's lease — a conditional UPDATE on the rollout row, so of several
replicas sharing the database exactly one decides for a rollout at a time, and another takes
over when that one stops renewing. It then reads both arms' spans since the step began, judges
them (``releases.analysis``) and applies the verdict in one transaction that re-checks the
rollout is still at that step: ``fail`` rolls back at once with the reasons recorded, ``pass``
after the bake time moves to the next step (reaching 100% promotes), ``wait`` only records the
analysis. A/B and shadow rollouts are never promoted automatically (a person reads the results
and promotes); a guard breach rolls them back like a canary. Each step, promotion and
rollback it makes is audited as ``system:rollout-controller`` in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from aiohttp import web

from bastion.audit import AuditChain, AuditTrail, system_actor
from bastion.releases import rollouts
from bastion.releases.analysis import (
    agreement,
    arm_names,
    fetch_samples,
    judge,
    score_samples,
)
from bastion.releases.config import ReleasesConfig, load_releases_config
from bastion.releases.store import now_utc
from bastion.runtime.background import ThreadWork
from bastion.services.state import STATE
from bastion.settings import Settings
from bastion.store.transactions import run_write

__all__ = ["AnalysisController", "Decision", "install_controller"]

log = logging.getLogger("bastion.releases")

CONTROLLER_ACTOR = system_actor("rollout-controller")


@dataclass(frozen=True, slots=True)
class Decision:
    """What one analysis did for one rollout."""

    rollout_id: str
    route: str
    outcome: str  # pass | fail | wait | skipped (another replica holds the lease)
    action: str | None  # step | promote | rollback | None
    reason: str


def _outputs_sample(rollout: rollouts.Rollout) -> float | None:
    """Which answers the analysis reads: the quality sample, and for a shadow rollout every
    answer (copies are compared with the answers users got)."""
    if rollout.strategy == "shadow":
        return 1.0
    return rollout.policy.quality_sample if rollout.policy.quality is not None else None


class AnalysisController:
    """Analyses every running rollout; one instance per server process."""

    def __init__(
        self,
        engine: sa.Engine,
        config: ReleasesConfig,
        owner: str | None = None,
        *,
        audit: AuditChain,
    ) -> None:
        self.engine = engine
        self.config = config
        self.trail = AuditTrail(audit, CONTROLLER_ACTOR)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.work = ThreadWork()

    def tick(self, now: datetime | None = None) -> list[Decision]:
        """One analysis of every running rollout (blocking; call on a worker thread)."""
        with self.engine.connect() as conn:
            running = rollouts.running_rollouts(conn)
        decisions = []
        for rollout in running:
            try:
                decisions.append(self._analyse(rollout, now or now_utc()))
            except sa.exc.SQLAlchemyError as exc:
                log.warning("analysis of rollout %s failed: %s", rollout.rollout_id, exc)
        return decisions

    def _analyse(self, rollout: rollouts.Rollout, now: datetime) -> Decision:
        pid, rid = rollout.project_id, rollout.rollout_id
        claimed = run_write(
            self.engine,
            lambda conn: rollouts.claim_lease(conn, pid, rid, self.owner, self.config.lease_s),
        )
        if not claimed:
            return Decision(rid, rollout.route, "skipped", None, "another replica decides")
        since_ns = int(rollout.step_started_at.timestamp() * 1e9)
        with self.engine.connect() as conn:
            samples = fetch_samples(
                conn,
                pid,
                rid,
                [rollout.stable_release_id, rollout.candidate_release_id],
                since_ns,
                limit=self.config.max_spans_per_window,
                outputs_sample=_outputs_sample(rollout),
            )
        if rollout.policy.quality is not None:
            samples = score_samples(rollout.policy.quality, samples)
        stable_arm, candidate_arm = arm_names(rollout.strategy)
        baked = (now - rollout.step_started_at).total_seconds() >= rollout.policy.bake_s
        verdict = judge(
            [s for s in samples if s.arm == stable_arm],
            [s for s in samples if s.arm == candidate_arm],
            rollout.policy,
            baked=baked,
        )
        pairs = agreement(samples) if rollout.strategy == "shadow" else None
        if pairs is not None:
            verdict.checks["shadow_agreement"] = pairs
        analysis = {
            "at": now.isoformat(),
            "step": rollout.step,
            "weight": rollout.weight,
            **verdict.to_dict(),
        }
        step = rollout.step
        if verdict.outcome == "fail":
            reason = f"automatic rollback at {rollout.weight:g}%: {verdict.summary}"
            done = run_write(
                self.engine,
                lambda conn: rollouts.fail(
                    conn, pid, rid, step, analysis, reason, audit=self.trail
                ),
            )
            log.warning("rollout %s of route %r: %s", rid, rollout.route, reason)
            return Decision(rid, rollout.route, "fail", "rollback" if done else None, reason)
        if verdict.outcome == "pass" and rollout.strategy == "canary":
            moved = run_write(
                self.engine,
                lambda conn: rollouts.advance(conn, pid, rid, step, analysis, audit=self.trail),
            )
            action = None
            if moved is not None:
                action = "promote" if moved.state == "promoted" else "step"
                log.info("rollout %s of route %r: %s", rid, rollout.route, moved.reason)
            return Decision(rid, rollout.route, "pass", action, verdict.summary)
        reason = verdict.summary
        if verdict.outcome == "pass":
            reason = f"{reason}; {rollout.strategy} rollouts are promoted by hand"
        run_write(
            self.engine,
            lambda conn: rollouts.save_analysis(conn, pid, rid, step, analysis, reason),
        )
        return Decision(rid, rollout.route, verdict.outcome, None, reason)

    async def run(self) -> None:
        """Analyse every ``analysis_interval_s`` until cancelled; errors are logged, not fatal."""
        while True:
            await asyncio.sleep(self.config.analysis_interval_s)
            try:
                await self.work.run(self.tick)
            except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
                log.warning("rollout analysis failed (retrying next interval): %s", exc)


def install_controller(app: web.Application, settings: Settings) -> None:
    """Run the analysis controller while the server runs (unless ``releases.controller``
    is false, e.g. on gateway-only replicas)."""
    config = load_releases_config(settings)
    if not config.controller:
        return

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        controller = AnalysisController(app[STATE].engine, config, audit=app[STATE].audit)
        task = asyncio.create_task(controller.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await controller.work.drain()

    app.cleanup_ctx.append(lifecycle)
