"""The read-only pages a span links to: a prompt version, a release, a dataset item.

Each shows what the registry holds (the prompt's template, the release's bundle, the item's
variables and expectation) and links back to the traces that involve it.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from aiohttp import web

from bastion import names
from bastion.prompts.registry_queries import RegistryError, ResolvedPrompt
from bastion.prompts.registry_queries import get as get_prompt
from bastion.releases.store import ReleaseError, ReleaseInfo, get_release
from bastion.store.schema import eval_dataset_items, eval_datasets, eval_item_sources
from bastion.ui.pages import Page, UiRoute, page
from bastion.ui.payloads import json_node, read_payload

__all__ = ["ROUTES"]

_MAX_VERSION = 2**31 - 1


def _version(raw: str) -> int | None:
    if raw.isascii() and raw.isdigit() and len(raw) <= 10 and 1 <= int(raw) <= _MAX_VERSION:
        return int(raw)
    return None


async def prompt_version(p: Page) -> web.StreamResponse:
    name = p.request.match_info["name"]
    version = _version(p.request.match_info["version"])
    if not names.PROMPT.is_valid(name) or version is None:
        return p.error(404, "No such prompt version (a prompt name and a version number).")
    try:
        found: ResolvedPrompt = await p.read(
            lambda c: get_prompt(c, p.project_id, name, version=version)
        )
    except RegistryError as exc:
        return p.error(404, str(exc))
    spec = found.spec
    return p.render(
        "linked/prompt.html",
        prompt=found,
        template=read_payload(orjson.dumps(spec).decode()),
        spec=json_node(spec),
        current="traces",
    )


async def release(p: Page) -> web.StreamResponse:
    release_id = p.request.match_info["release_id"]
    if not (release_id.isascii() and release_id.isalnum() and len(release_id) <= 64):
        return p.error(404, "No such release.")
    try:
        found: ReleaseInfo = await p.read(lambda c: get_release(c, p.project_id, release_id))
    except ReleaseError as exc:
        return p.error(404, str(exc))
    arm = p.request.query.get("arm", "")
    return p.render(
        "linked/release.html",
        release=found,
        spec=json_node(found.spec.to_dict()),
        arm=arm if arm in ("stable", "candidate") else "",
        current="traces",
    )


def _dataset_item(
    conn: sa.Connection, project_id: int, name: str, version: int, item_id: str
) -> tuple[dict[str, Any], tuple[str, str] | None] | None:
    """The item's JSON and the (trace, span) it was made from, or None if there is none."""
    ds, items, src = eval_datasets.c, eval_dataset_items.c, eval_item_sources.c
    version_id = conn.execute(
        sa.select(ds.id).where(ds.project_id == project_id, ds.name == name, ds.version == version)
    ).scalar()
    if version_id is None:
        return None
    raw = conn.execute(
        sa.select(items.item).where(
            items.project_id == project_id,
            items.dataset_version_id == version_id,
            items.item_id == item_id,
        )
    ).scalar()
    if raw is None:
        return None
    source = conn.execute(
        sa.select(src.trace_id, src.span_id).where(
            src.project_id == project_id,
            src.dataset_version_id == version_id,
            src.item_id == item_id,
        )
    ).first()
    return orjson.loads(raw), (None if source is None else (source[0], source[1]))


async def dataset_item(p: Page) -> web.StreamResponse:
    name = p.request.match_info["name"]
    version = _version(p.request.match_info["version"])
    item_id = p.request.query.get("item", "")
    if not names.DATASET.is_valid(name) or version is None or not 0 < len(item_id) <= 200:
        return p.error(404, "No such dataset item (a dataset, a version and ?item=<id>).")
    found = await p.read(lambda c: _dataset_item(c, p.project_id, name, version, item_id))
    if found is None:
        return p.error(404, f"No item {item_id!r} in dataset {name} version {version}.")
    item, source = found
    return p.render(
        "linked/dataset_item.html",
        dataset=name,
        version=version,
        item_id=item_id,
        item=json_node(item),
        source=source,
        current="traces",
    )


ROUTES = [
    UiRoute("GET", "/ui/p/{project}/prompts/{name}/versions/{version}", page(prompt_version)),
    UiRoute("GET", "/ui/p/{project}/releases/{release_id}", page(release)),
    UiRoute("GET", "/ui/p/{project}/datasets/{name}/versions/{version}", page(dataset_item)),
]
