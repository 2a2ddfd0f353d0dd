"""Spans: the model, OTLP decoding, attribute normalisation and the span contract."""

from bastion.tracing.model import Span, SpanKind, StatusCode

__all__ = ["Span", "SpanKind", "StatusCode"]
