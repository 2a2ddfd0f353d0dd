"""What a running server holds: built once from :class:`Settings` and stored on the app."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CollectorRegistry

from bastion.audit import AuditChain
from bastion.auth import KeyCache, ensure_project
from bastion.catalog import Catalog
from bastion.ingest.pipeline import IngestMetrics, IngestPipeline
from bastion.ingest.spool import Spool
from bastion.settings import PriceOverride, Settings
from bastion.store import migrate
from bastion.store.engine import create_engine
from bastion.store.writer import SpanWriter

__all__ = ["STATE", "AppState", "build_state", "load_catalog"]

log = logging.getLogger("bastion.server")


@dataclass
class AppState:
    settings: Settings
    engine: sa.Engine
    keys: KeyCache
    catalog: Catalog
    pipeline: IngestPipeline
    registry: CollectorRegistry
    default_project_id: int = 1
    owns_engine: bool = True
    extras: dict[str, object] = field(default_factory=dict)
    # The audit chain's hashing, with the server's secret if one is configured.
    audit: AuditChain = field(default_factory=AuditChain)

    def close(self) -> None:
        self.pipeline.stop()
        if self.owns_engine:
            self.engine.dispose()


STATE = web.AppKey("bastion_state", AppState)

# The simulator's models are priced like small and large hosted models, so demos show real costs.
SIMULATOR_PRICES = {
    "sim-small": PriceOverride(input_usd_per_mtok=0.15, output_usd_per_mtok=0.6),
    "sim-large": PriceOverride(input_usd_per_mtok=2.5, output_usd_per_mtok=10.0),
}


def _connect_args(url: str) -> dict[str, object]:
    # A database that stops answering must fail fast so the spool takes over.
    if url.startswith("postgresql"):
        return {"connect_timeout": 5}
    return {}


def load_catalog(
    settings: Settings, engine: sa.Engine, *, registry: CollectorRegistry | None = None
) -> Catalog:
    """The model catalog with the simulator's, the configuration's and each project's prices."""
    with engine.begin() as conn:
        project_prices = {
            ensure_project(conn, slug): project.prices
            for slug, project in settings.projects.items()
            if project.prices
        }
    prices = {**SIMULATOR_PRICES, **settings.prices}
    return Catalog.load(prices, project_overrides=project_prices, registry=registry)


def build_state(settings: Settings, *, engine: sa.Engine | None = None) -> AppState:
    """Open (and migrate) the database, load keys and the catalog, create the pipeline."""
    audit = AuditChain.from_settings(settings.audit)  # a named but unset secret stops here
    owns_engine = engine is None
    if engine is None:
        url = settings.resolved_database_url
        engine = create_engine(
            url,
            sqlite_synchronous=settings.ingest.sqlite_synchronous,
            sqlite_cache_mib=settings.ingest.sqlite_cache_mib,
            sqlite_heap_limit_mib=settings.ingest.sqlite_heap_limit_mib,
            sqlite_wal_autocheckpoint_pages=settings.ingest.sqlite_wal_autocheckpoint_pages,
            connect_args=_connect_args(url),
        )
    settings.home.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        default_project_id = ensure_project(conn)
    keys = KeyCache(engine)
    keys.reload()
    registry = CollectorRegistry()
    catalog = load_catalog(settings, engine, registry=registry)
    metrics = IngestMetrics(registry)
    pipeline = IngestPipeline(
        SpanWriter(engine),
        Spool(settings.spool_dir),
        metrics=metrics,
        queue_max_spans=settings.ingest.queue_max_spans,
        batch_max_spans=settings.ingest.batch_max_spans,
        batch_linger_s=settings.ingest.batch_linger_ms / 1000,
        replay_interval_s=settings.ingest.spool_replay_interval_s,
        rollup_fold_interval_s=settings.ingest.rollup_fold_interval_ms / 1000,
        spool_stale_after_s=settings.ingest.spool_stale_after_s,
        price=catalog.price_span,
    )
    return AppState(
        settings=settings,
        engine=engine,
        keys=keys,
        catalog=catalog,
        pipeline=pipeline,
        registry=registry,
        default_project_id=default_project_id,
        owns_engine=owns_engine,
        audit=audit,
    )
