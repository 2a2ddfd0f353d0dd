"""Translation between the OpenAI Chat Completions and Anthropic Messages formats."""

from bastion.providers.translate.requests import (
    TranslationError,
    anthropic_to_openai_request,
    openai_to_anthropic_request,
)
from bastion.providers.translate.responses import (
    Usage,
    anthropic_to_openai_response,
    anthropic_usage,
    openai_to_anthropic_response,
    openai_usage,
)
from bastion.providers.translate.streams import (
    AnthropicStreamObserver,
    AnthropicToOpenAIStream,
    OpenAIStreamObserver,
    OpenAIToAnthropicStream,
    StreamSummary,
)

__all__ = [
    "AnthropicStreamObserver",
    "AnthropicToOpenAIStream",
    "OpenAIStreamObserver",
    "OpenAIToAnthropicStream",
    "StreamSummary",
    "TranslationError",
    "Usage",
    "anthropic_to_openai_request",
    "anthropic_to_openai_response",
    "anthropic_usage",
    "openai_to_anthropic_request",
    "openai_to_anthropic_response",
    "openai_usage",
]
