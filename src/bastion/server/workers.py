"""Several server processes on one port, so that a multi-core machine is used.

One Python process runs one event loop and one span writer, and the GIL keeps both on one core.
``bastion serve --workers N`` starts N worker processes that bind the same port with
``SO_REUSEPORT`` (the kernel spreads connections across them), each with its own ingest queue,
writer and spool directory, while this parent process only prepares and supervises:

- it migrates the database once, before any worker opens it;
- it gives every spool segment a worker that will replay it (:func:`rebalance_spool`), also
  when the number of workers changed since the segment was written;
- it restarts a worker that died, and on SIGTERM/SIGINT stops them all gracefully (each
  worker flushes its queue before it exits).

Per-process state stays per worker: ``/metrics`` reports the worker that answered, and
in-memory gateway state (prompt cache, key cache) is loaded by each worker. Rate limits and
budgets are the exception: without Redis, this process rebuilds their counters from the stored
spans and holds them as the host's one ledger, which every worker asks over a Unix socket
(:mod:`bastion.gateway.limit_broker`), so N workers enforce exactly what one process would.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from bastion.settings import Settings

if TYPE_CHECKING:
    import sqlalchemy as sa

    from bastion.gateway.limit_broker import LimitBroker

__all__ = ["WORKER_DIR", "rebalance_spool", "serve_workers", "worker_spool_dir"]

log = logging.getLogger("bastion.server")

WORKER_DIR = "worker-{index}"
_WORKER_DIR_RE = re.compile(r"^worker-(\d+)$")
_SEGMENT_RE = re.compile(r"^segment-(\d+)\.spool$")
_RESTART_DELAY_S = 1.0
_STOP_TIMEOUT_S = 60.0


def worker_spool_dir(root: Path, index: int | None) -> Path:
    """The spool directory of worker ``index`` (``root`` itself for a single process); the
    same layout as :attr:`Settings.spool_dir`."""
    return root if index is None else root / WORKER_DIR.format(index=index)


def _segments(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _SEGMENT_RE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rebalance_spool(root: Path, workers: int) -> int:
    """Move spool segments no running worker would replay to one that will; returns how many.

    With one process the segments live in ``root``; with N workers in ``root/worker-0`` …
    ``root/worker-{N-1}``. Segments left elsewhere (another worker count before a restart)
    move to ``worker-{k mod N}`` (``root`` counts as worker 0), oldest first and numbered after
    the target's own, so replay order within a source is kept. Must run while no process
    appends to the spool.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    root.mkdir(parents=True, exist_ok=True)
    sources: list[tuple[int, Path]] = [(0, root)]
    for child in sorted(root.iterdir()):
        match = _WORKER_DIR_RE.match(child.name)
        if match and child.is_dir():
            sources.append((int(match.group(1)), child))
    moved = 0
    for index, directory in sources:
        target = worker_spool_dir(root, None if workers == 1 else index % workers)
        if directory == target:
            continue
        segments = _segments(directory)
        if not segments:
            continue
        target.mkdir(parents=True, exist_ok=True)
        next_seq = 1 + max((seq for seq, _ in _segments(target)), default=0)
        for _, path in segments:
            path.rename(target / f"segment-{next_seq:012d}.spool")
            next_seq += 1
            moved += 1
        _fsync_dir(target)
        _fsync_dir(directory)
    if moved:
        log.warning("spool: moved %d segment(s) to the workers that will replay them", moved)
    return moved


def _worker_main(settings: Settings, index: int, api: bool) -> None:
    """Entry point of one worker process (spawned: nothing is inherited but ``settings``)."""
    from aiohttp import web

    from bastion.server.access_log import RedactingAccessLogger
    from bastion.server.app import create_app
    from bastion.server.event_loop import new_event_loop
    from bastion.server.gc_tuning import tune_gc
    from bastion.server.malloc import limit_malloc_arenas

    limit_malloc_arenas()
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s",
    )
    settings.worker_index = index
    application = create_app(settings, api=api, gateway=True)
    tune_gc(settings.gc_young_threshold)
    web.run_app(
        application,
        host=settings.host,
        port=settings.port,
        reuse_port=True,
        print=None,
        loop=new_event_loop(),
        access_log_class=RedactingAccessLogger,
    )


class _Supervisor:
    def __init__(self, settings: Settings, workers: int, api: bool) -> None:
        self.settings = settings
        self.workers = workers
        self.api = api
        self.context = multiprocessing.get_context("spawn")
        self.processes: dict[int, Any] = {}
        self.stopping = False

    def start(self, index: int) -> None:
        process = self.context.Process(
            target=_worker_main,
            args=(self.settings, index, self.api),
            name=f"bastion-worker-{index}",
        )
        process.start()
        self.processes[index] = process

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for process in self.processes.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def run(self) -> int:
        for index in range(self.workers):
            self.start(index)
        while not self.stopping:
            sentinels = {p.sentinel: i for i, p in self.processes.items()}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=1.0)
            for sentinel in ready:
                index = sentinels[sentinel]
                code = self.processes[index].exitcode
                if self.stopping:
                    break
                log.error("worker %d exited with code %s; restarting it", index, code)
                time.sleep(_RESTART_DELAY_S)
                if not self.stopping:
                    self.start(index)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        failed = 0
        for process in self.processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("%s did not stop in time; killing it", process.name)
                process.kill()
                process.join()
                failed += 1
        return 1 if failed else 0


def serve_workers(settings: Settings, *, api: bool) -> int:
    """Run ``settings.workers`` server processes on ``settings.host:settings.port``; the exit
    code."""
    from bastion.store import migrate
    from bastion.store.engine import create_engine

    settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    try:
        migrate.upgrade(engine)
        ledger = _start_limits_ledger(settings, engine)
    finally:
        engine.dispose()
    rebalance_spool(settings.home / "spool", settings.workers)
    supervisor = _Supervisor(settings, settings.workers, api)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    try:
        return supervisor.run()
    finally:
        if ledger is not None:
            ledger.stop()


def _start_limits_ledger(settings: Settings, engine: sa.Engine) -> LimitBroker | None:
    """Without Redis, budgets and rate limits of all workers live here, rebuilt from the stored
    spans before any worker starts; the workers find it through ``settings.limits_socket``.
    None when there is nothing to hold (no rules) or Redis holds it."""
    from bastion.gateway.limit_broker import LimitBroker
    from bastion.gateway.limit_rebuild import rebuild_ledger
    from bastion.gateway.limit_store import MemoryLimitStore
    from bastion.gateway.limits_config import load_limits_config
    from bastion.services.state import load_catalog

    if settings.redis_url:
        return None
    limits = load_limits_config(settings)
    if limits.empty:
        return None
    store = MemoryLimitStore()
    rebuild_ledger(engine, limits, load_catalog(settings, engine)).apply(store)
    ledger = LimitBroker(store)
    ledger.start()
    settings.limits_socket = ledger.path
    log.info("limits: %d workers share one ledger on %s", settings.workers, ledger.path)
    return ledger
