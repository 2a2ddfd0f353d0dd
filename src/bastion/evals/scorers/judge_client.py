"""The small async client that asks the judge model: any OpenAI-compatible
``/v1/chat/completions`` endpoint, normally Bastion's own gateway (so judge calls are traced
and budgeted like any other), or a provider directly."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from bastion.evals.scorers.base import ScorerError, as_text

__all__ = ["JudgeClient", "JudgeError", "JudgeReply"]


class JudgeError(RuntimeError):
    """The judge could not be asked: unreachable, an HTTP error, or a reply that is not a chat
    completion. Says nothing about the output being judged."""


@dataclass(frozen=True, slots=True)
class JudgeReply:
    """The judge's answer text, the model that served it and the whole response body."""

    text: str
    model: str
    raw: Mapping[str, Any] = field(repr=False)


class JudgeClient:
    """A minimal async client for an OpenAI-compatible chat completions endpoint.

    ``base_url`` ends where the OpenAI SDK's does (``http://host:port/v1``). Use it as an async
    context manager to share one connection pool across calls; without one, each call opens and
    closes its own session::

        async with JudgeClient("http://127.0.0.1:8000/v1", api_key=key, model="gpt-4o") as judge:
            scorer = make_scorer({"type": "llm-rubric", "value": "is polite"},
                                 context=ScorerContext(judge=judge))
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ScorerError(f"judge base_url must be an http(s) URL, got {base_url!r}")
        if not model:
            raise ScorerError("judge model is required")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"JudgeClient(base_url={self.base_url!r}, model={self.model!r})"

    def _new_session(self) -> aiohttp.ClientSession:
        headers = {"content-type": "application/json", **self.headers}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )

    async def __aenter__(self) -> JudgeClient:
        if self._session is None or self._session.closed:
            self._session = self._new_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the shared session, if one is open."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def complete(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None
    ) -> JudgeReply:
        """The judge's reply to ``messages``.

        Raises:
            JudgeError: the endpoint is unreachable, answers an HTTP error or no completion.
        """
        body: dict[str, Any] = {
            "model": model or self.model,
            "messages": list(messages),
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        url = self.base_url + "/chat/completions"
        if self._session is not None and not self._session.closed:
            return await self._post(self._session, url, body)
        async with self._new_session() as session:
            return await self._post(session, url, body)

    async def _post(
        self, session: aiohttp.ClientSession, url: str, body: Mapping[str, Any]
    ) -> JudgeReply:
        try:
            async with session.post(url, data=json.dumps(body)) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JudgeError(f"judge at {url} unreachable: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            snippet = payload[:300].decode("utf-8", "replace")
            raise JudgeError(f"judge at {url} answered HTTP {status}: {snippet}")
        try:
            data = json.loads(payload)
            message = data["choices"][0]["message"]
            text = message.get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise JudgeError(
                f"judge at {url} answered something that is not a chat completion: "
                f"{payload[:200].decode('utf-8', 'replace')}"
            ) from None
        if not isinstance(text, str):
            text = as_text(text)
        served = data.get("model") if isinstance(data.get("model"), str) else body["model"]
        return JudgeReply(text=text, model=str(served), raw=data)
