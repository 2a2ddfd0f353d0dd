"""OTLP/HTTP trace receiver: ``POST /v1/traces`` and the Langfuse-compatible path.

Status codes follow the OTLP/HTTP specification so exporters do the right thing: 200 (with
partial success when some spans were invalid), 400 for a malformed body (not retried), 413
for an oversized one, 415 for an unknown content type, 429/503 with ``Retry-After`` under
back-pressure or while nothing can make spans durable (retried). Never a 500 for those.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from bastion.auth import AuthError, Permission
from bastion.ingest.pipeline import Backpressure, NotDurable
from bastion.server.auth import authenticate
from bastion.services.state import STATE
from bastion.store.writer import PreparedBatch
from bastion.tracing.otlp import DecodeResult, OtlpError, decode_request, encode_response

__all__ = ["routes"]

# Bodies larger than this are decoded on a worker thread, keeping the event loop responsive.
_DECODE_INLINE_MAX = 256 * 1024


def _is_json(request: web.Request) -> bool:
    return (
        request.headers.get("Content-Type", "").split(";")[0].strip().lower() == "application/json"
    )


def _status_body(request: web.Request, status: int, message: str, **headers: str) -> web.Response:
    """An error response in the request's encoding (google.rpc.Status, as OTLP asks)."""
    if _is_json(request):
        return web.Response(
            status=status,
            body=orjson.dumps({"code": status, "message": message}),
            content_type="application/json",
            headers=headers,
        )
    return web.Response(
        status=status,
        body=_rpc_status(status, message),
        content_type="application/x-protobuf",
        headers=headers,
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _rpc_status(code: int, message: str) -> bytes:
    """``google.rpc.Status{code, message}`` in protobuf wire format (two fields, no dependency)."""
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


async def _receive(request: web.Request, *, allow_basic: bool) -> web.Response:
    state = request.app[STATE]
    try:
        principal = await authenticate(request, Permission.SPANS_INGEST, allow_basic=allow_basic)
    except AuthError as exc:
        retry = {"Retry-After": "5"} if exc.status == 503 else {}
        return _status_body(request, exc.status, str(exc), **retry)
    max_bytes = state.settings.ingest.max_request_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        return _status_body(
            request, 413, f"request body of {request.content_length} bytes exceeds {max_bytes}"
        )
    try:
        body = await _read_capped(request, max_bytes)
    except OtlpError as exc:
        return _status_body(request, exc.status, str(exc))

    def decode() -> tuple[DecodeResult, PreparedBatch | None]:
        decoded = decode_request(
            body,
            content_type=request.headers.get("Content-Type"),
            content_encoding=request.headers.get("Content-Encoding"),
            max_bytes=max_bytes,
            max_message_chars=state.settings.ingest.max_message_chars,
        )
        # Rows are built here, beside the writer thread, not in it.
        return decoded, state.pipeline.prepare(principal.project_id, decoded.spans)

    def decode_in_thread() -> tuple[DecodeResult, PreparedBatch | None]:
        state.pipeline.yield_to_writer()
        return decode()

    try:
        if len(body) > _DECODE_INLINE_MAX:
            loop = asyncio.get_running_loop()
            result, prepared = await loop.run_in_executor(None, decode_in_thread)
        else:
            result, prepared = decode()
    except OtlpError as exc:
        return _status_body(request, exc.status, str(exc))
    try:
        await state.pipeline.submit(principal.project_id, result.spans, prepared)
    except Backpressure as exc:
        return _status_body(request, 429, str(exc), **{"Retry-After": str(exc.retry_after_s)})
    except NotDurable as exc:
        return _status_body(request, 503, str(exc), **{"Retry-After": "5"})
    as_json = _is_json(request)
    return web.Response(
        body=encode_response(result, json=as_json),
        content_type="application/json" if as_json else "application/x-protobuf",
    )


async def _read_capped(request: web.Request, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise OtlpError(f"request body exceeds {max_bytes} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_traces(request: web.Request) -> web.Response:
    """OTLP/HTTP export: authenticated by ``Authorization: Bearer <key>``."""
    return await _receive(request, allow_basic=False)


async def receive_langfuse_traces(request: web.Request) -> web.Response:
    """The Langfuse SDK's OTLP endpoint: Basic auth where either part may be the Bastion key."""
    return await _receive(request, allow_basic=True)


routes = [
    web.post("/v1/traces", receive_traces),
    web.post("/api/public/otel/v1/traces", receive_langfuse_traces),
]
