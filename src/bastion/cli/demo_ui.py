"""The demo's part for the web UI: a short conversation (so the Sessions page has a thread to
read) and the closing lines saying where the UI is and how to sign in."""

from __future__ import annotations

from typing import Any

from rich.console import Console

__all__ = ["DEMO_SESSION", "add_dashboard_sections", "converse", "print_ui_hint"]

DEMO_SESSION = "demo-conversation-1"
_TURNS = (
    "Hi! My order 1040 has not arrived.",
    "It says delivered, but it is not at my door.",
    "Thanks. Can you send a replacement?",
)

_FAQ = "What are your opening hours?"


def add_dashboard_sections(sections: dict[str, Any], healthy_model: str) -> None:
    """Budgets, a response cache and a breaker for the dashboards to show, unless the
    configuration declares its own. Token budgets (no price needed) far above the demo's use;
    only requests at temperature 0 are cached, so the rollouts' traffic is never answered from
    the cache; the breaker watches the healthy release model, so it stays closed."""
    sections.setdefault(
        "budgets",
        [
            {"scope": "project", "period": "day", "limit_tokens": 5_000_000},
            {"scope": "tenant", "period": "day", "limit_tokens": 1_000_000},
        ],
    )
    sections.setdefault("cache", {"exact": {"ttl_s": 3600, "max_temperature": 0}})
    alias = sections.get("models", {}).get(healthy_model)
    if isinstance(alias, dict):
        alias.setdefault(
            "breaker", {"error_rate": 0.5, "window_s": 60, "min_requests": 20, "cooldown_s": 30}
        )


async def converse(console: Console, http: Any, base: str) -> None:
    """Three turns of one session through the gateway, each call carrying the history."""
    messages: list[dict[str, str]] = []
    headers = {
        "x-bastion-session": DEMO_SESSION,
        "x-bastion-user": "user-7",
        "x-bastion-tenant": "acme",
        "x-bastion-feature": "support-chat",
    }
    with console.status("a three-turn conversation through the gateway…"):
        for turn in _TURNS:
            messages.append({"role": "user", "content": turn})
            async with http.post(
                f"{base}/v1/chat/completions",
                json={"model": "sim-small", "messages": messages},
                headers=headers,
            ) as response:
                response.raise_for_status()
                body = await response.json()
            messages.append(body["choices"][0]["message"])
        outcomes = []
        for _ in range(2):  # the same question twice at temperature 0: the second is a hit
            async with http.post(
                f"{base}/v1/chat/completions",
                json={
                    "model": "sim-small",
                    "temperature": 0,
                    "messages": [{"role": "user", "content": _FAQ}],
                },
                headers={**headers, "x-bastion-session": f"{DEMO_SESSION}-faq"},
            ) as response:
                response.raise_for_status()
                await response.read()
                outcomes.append(response.headers.get("x-bastion-cache", "off"))
    console.print(
        f"[green]✓[/green] conversation {DEMO_SESSION!r}: {len(_TURNS)} turns;"
        f" the same question twice: cache {' then '.join(outcomes)}"
    )


def print_ui_hint(console: Console, base: str, owner: tuple[str, str] | None) -> None:
    """Where the UI is, and who signs in."""
    if owner is not None:
        login = f"name {owner[0]}  password {owner[1]}  (shown once: keep it)"
    else:
        login = "a person who already exists (`bastion users list`; `bastion users add` for more)"
    console.print(
        f"Open the UI:  {base}/ui/\n"
        f"  sign in with {login}\n"
        f"  Dashboards:  {base}/ui/p/default/dashboards\n"
        f"  Sessions:    {base}/ui/p/default/sessions/{DEMO_SESSION}\n",
        highlight=False,
        soft_wrap=True,
    )
