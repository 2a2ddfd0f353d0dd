"""The span contract: every ``bastion.*`` attribute and event name, defined once.

Producers (the gateway, releases, the prompt registry) set these names on the spans they
record; consumers (ingestion, analysis, datasets from traces, limit rebuilds) read them.
The string values are part of the stored data and of the OTLP contract with other
producers: never change one, only add. Every ``"bastion.…"`` attribute-name literal in the
code is defined here (a test scans the sources).
"""

from __future__ import annotations

__all__ = [
    "ADMISSION_SHADOW",
    "ADMISSION_STORE",
    "BREAKER_DEPLOYMENT",
    "BREAKER_FROM",
    "BREAKER_REASON",
    "BREAKER_REMOTE",
    "BREAKER_TO",
    "BREAKER_TRANSITION",
    "BUDGET_COST_USD",
    "BUDGET_DECISION",
    "BUDGET_DEGRADED_FROM",
    "BUDGET_DEGRADED_TO",
    "BUDGET_LIMIT_PREFIX",
    "BUDGET_PERIOD",
    "BUDGET_PRICE_UNKNOWN",
    "BUDGET_RESERVED_TOKENS",
    "BUDGET_RESERVED_USD",
    "BUDGET_RULE",
    "BUDGET_SCOPE",
    "BUDGET_SPENT_PREFIX",
    "BUDGET_THRESHOLD",
    "BUDGET_THRESHOLD_PERCENT",
    "BUDGET_UNPRICED",
    "BUDGET_VALUE",
    "CACHE_AGE_S",
    "CACHE_EMBEDDING_MS",
    "CACHE_KEY",
    "CACHE_LAYER",
    "CACHE_SAVED_USD",
    "CACHE_SIMILARITY",
    "CACHE_STATUS",
    "COST_USD",
    "ERROR_CLASS",
    "FEATURE",
    "GATEWAY_ALIAS",
    "GATEWAY_API",
    "GATEWAY_ATTEMPTS",
    "GATEWAY_BREAKER_TRANSITIONS",
    "GATEWAY_DEPLOYMENT",
    "GATEWAY_ESTIMATED_INPUT_TOKENS",
    "GATEWAY_FALLBACK_ALIAS",
    "GATEWAY_KEY_ID",
    "GATEWAY_STREAM",
    "GATEWAY_STREAM_EVENTS",
    "INPUT",
    "MODEL_REQUESTED",
    "MODEL_SERVED",
    "OPERATION",
    "OUTPUT",
    "PROMPT_HASH",
    "PROMPT_LABEL",
    "PROMPT_NAME",
    "PROMPT_SOURCE",
    "PROMPT_VARIABLES",
    "PROMPT_VERSION",
    "PROVIDER",
    "RATELIMIT_DECISION",
    "RATELIMIT_RULE",
    "RATELIMIT_RULES",
    "RELEASE_ARM",
    "RELEASE_ENVIRONMENT",
    "RELEASE_FALLBACKS",
    "RELEASE_ID",
    "RELEASE_NAME",
    "RELEASE_ROLLOUT",
    "RELEASE_ROUTE",
    "RELEASE_SHADOW_OF",
    "RELEASE_STEP",
    "RELEASE_STRATEGY",
    "RELEASE_UNKNOWN_FALLBACKS",
    "RELEASE_WEIGHT",
    "REQUEST_ID",
    "ROUTING_ALIAS",
    "ROUTING_REASON",
    "ROUTING_TARGET",
    "ROUTING_TIER",
    "SESSION",
    "TEAM",
    "TENANT",
    "TTFT_MS",
    "USAGE_CACHED_TOKENS",
    "USAGE_CACHE_WRITE_TOKENS",
    "USAGE_ESTIMATED",
    "USAGE_INPUT_TOKENS",
    "USAGE_OUTPUT_TOKENS",
    "USER",
]

# -- bastion.* (top level) -------------------------------------------------------------
# Span identity and usage, read by ingestion (``tracing.normalize``) ahead of the OpenTelemetry
# GenAI and OpenInference names, and set by the gateway on the spans it records.

COST_USD = "bastion.cost_usd"
ERROR_CLASS = "bastion.error_class"
FEATURE = "bastion.feature"
INPUT = "bastion.input"
OPERATION = "bastion.operation"
OUTPUT = "bastion.output"
PROVIDER = "bastion.provider"
REQUEST_ID = "bastion.request_id"
SESSION = "bastion.session"
TEAM = "bastion.team"
TENANT = "bastion.tenant"
TTFT_MS = "bastion.ttft_ms"
USER = "bastion.user"

# -- bastion.model.* -------------------------------------------------------------------
# The model a client asked for and the one that served the call.

MODEL_REQUESTED = "bastion.model.requested"
MODEL_SERVED = "bastion.model.served"

# -- bastion.usage.* -------------------------------------------------------------------
# Token counts; ``usage.estimated`` marks counts the gateway estimated because the provider
# reported none.

USAGE_CACHED_TOKENS = "bastion.usage.cached_tokens"
USAGE_CACHE_WRITE_TOKENS = "bastion.usage.cache_write_tokens"
USAGE_ESTIMATED = "bastion.usage.estimated"
USAGE_INPUT_TOKENS = "bastion.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "bastion.usage.output_tokens"

# -- bastion.prompt.* ------------------------------------------------------------------
# The registry prompt a call rendered (name, version, label, content hash, variables, and the
# source of a pushed version).

PROMPT_HASH = "bastion.prompt.hash"
PROMPT_LABEL = "bastion.prompt.label"
PROMPT_NAME = "bastion.prompt.name"
PROMPT_SOURCE = "bastion.prompt.source"
PROMPT_VARIABLES = "bastion.prompt.variables"
PROMPT_VERSION = "bastion.prompt.version"

# -- bastion.gateway.* -----------------------------------------------------------------
# How the gateway served a call: API format, alias, deployment, retries and fallbacks, the key
# that made it, streaming.

GATEWAY_ALIAS = "bastion.gateway.alias"
GATEWAY_API = "bastion.gateway.api"
GATEWAY_ATTEMPTS = "bastion.gateway.attempts"
GATEWAY_BREAKER_TRANSITIONS = "bastion.gateway.breaker_transitions"
GATEWAY_DEPLOYMENT = "bastion.gateway.deployment"
GATEWAY_ESTIMATED_INPUT_TOKENS = "bastion.gateway.estimated_input_tokens"
GATEWAY_FALLBACK_ALIAS = "bastion.gateway.fallback_alias"
GATEWAY_KEY_ID = "bastion.gateway.key_id"
GATEWAY_STREAM = "bastion.gateway.stream"
GATEWAY_STREAM_EVENTS = "bastion.gateway.stream_events"

# -- bastion.routing.* -----------------------------------------------------------------
# Tiered routing: the alias asked for, the classifier's tier and reason, the alias routed to.

ROUTING_ALIAS = "bastion.routing.alias"
ROUTING_REASON = "bastion.routing.reason"
ROUTING_TARGET = "bastion.routing.target"
ROUTING_TIER = "bastion.routing.tier"

# -- bastion.cache.* -------------------------------------------------------------------
# Response caching: exact and semantic layers, their outcome, key and savings.

CACHE_AGE_S = "bastion.cache.age_s"
CACHE_EMBEDDING_MS = "bastion.cache.embedding_ms"
CACHE_KEY = "bastion.cache.key"
CACHE_LAYER = "bastion.cache.layer"
CACHE_SAVED_USD = "bastion.cache.saved_usd"
CACHE_SIMILARITY = "bastion.cache.similarity"
CACHE_STATUS = "bastion.cache.status"

# -- bastion.admission.* ---------------------------------------------------------------
# Which shared-state store admitted the call, and whether limits ran in shadow mode.

ADMISSION_SHADOW = "bastion.admission.shadow"
ADMISSION_STORE = "bastion.admission.store"

# -- bastion.ratelimit.* ---------------------------------------------------------------
# Rate-limit decisions and the rules that made them.

RATELIMIT_DECISION = "bastion.ratelimit.decision"
RATELIMIT_RULE = "bastion.ratelimit.rule"
RATELIMIT_RULES = "bastion.ratelimit.rules"

# -- bastion.budget.* ------------------------------------------------------------------
# Budget decisions, reservations and degradations; ``budget.threshold`` is the event recorded when
# a budget crosses a warning threshold, with the ``budget.spent_<unit>`` and
# ``budget.limit_<unit>`` attributes.

BUDGET_COST_USD = "bastion.budget.cost_usd"
BUDGET_DECISION = "bastion.budget.decision"
BUDGET_DEGRADED_FROM = "bastion.budget.degraded_from"
BUDGET_DEGRADED_TO = "bastion.budget.degraded_to"
BUDGET_LIMIT_PREFIX = "bastion.budget.limit_"
BUDGET_PERIOD = "bastion.budget.period"
BUDGET_PRICE_UNKNOWN = "bastion.budget.price_unknown"
BUDGET_RESERVED_TOKENS = "bastion.budget.reserved_tokens"
BUDGET_RESERVED_USD = "bastion.budget.reserved_usd"
BUDGET_RULE = "bastion.budget.rule"
BUDGET_SCOPE = "bastion.budget.scope"
BUDGET_SPENT_PREFIX = "bastion.budget.spent_"
BUDGET_THRESHOLD = "bastion.budget.threshold"
BUDGET_THRESHOLD_PERCENT = "bastion.budget.threshold_percent"
BUDGET_UNPRICED = "bastion.budget.unpriced"
BUDGET_VALUE = "bastion.budget.value"

# -- bastion.breaker.* -----------------------------------------------------------------
# Circuit-breaker transitions (an event with the deployment, from and to states, reason, and
# whether another replica caused it).

BREAKER_DEPLOYMENT = "bastion.breaker.deployment"
BREAKER_FROM = "bastion.breaker.from"
BREAKER_REASON = "bastion.breaker.reason"
BREAKER_REMOTE = "bastion.breaker.remote"
BREAKER_TO = "bastion.breaker.to"
BREAKER_TRANSITION = "bastion.breaker.transition"

# -- bastion.release.* -----------------------------------------------------------------
# Release serving: the route, environment and release that served a call, the rollout arm, step,
# weight and strategy, fallbacks, and shadow copies.

RELEASE_ARM = "bastion.release.arm"
RELEASE_ENVIRONMENT = "bastion.release.environment"
RELEASE_FALLBACKS = "bastion.release.fallbacks"
RELEASE_ID = "bastion.release.id"
RELEASE_NAME = "bastion.release.name"
RELEASE_ROLLOUT = "bastion.release.rollout"
RELEASE_ROUTE = "bastion.release.route"
RELEASE_SHADOW_OF = "bastion.release.shadow_of"
RELEASE_STEP = "bastion.release.step"
RELEASE_STRATEGY = "bastion.release.strategy"
RELEASE_UNKNOWN_FALLBACKS = "bastion.release.unknown_fallbacks"
RELEASE_WEIGHT = "bastion.release.weight"
