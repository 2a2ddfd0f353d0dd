"""One typed settings object for the whole process.

Values come, lowest precedence first, from the defaults below, an optional ``bastion.yaml``
(``--config PATH`` or ``$BASTION_HOME/bastion.yaml``) and ``BASTION_*`` environment variables.
The object is built once at the edge (CLI, test fixture) and passed in explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bastion import names
from bastion.parsing import InputError, InputLimits, parse_yaml, read_bounded
from bastion.settings_approvals import ApprovalPolicy, ApprovalRule, EvalGateRequirement
from bastion.settings_retention import RetentionDays, RetentionPolicy, RetentionSettings

__all__ = [
    "ApprovalPolicy",
    "ApprovalRule",
    "AuditSettings",
    "AuthSettings",
    "ConfigError",
    "EvalGateRequirement",
    "GatewaySettings",
    "IngestSettings",
    "InputLimits",
    "OidcSettings",
    "PriceOverride",
    "ProjectSettings",
    "RetentionPolicy",
    "RetentionSettings",
    "Settings",
    "TemplateSettings",
    "load_settings",
]


class ConfigError(ValueError):
    """A configuration file or value is invalid; names the key and, if known, the line."""


class IngestSettings(BaseModel):
    """Tuning of the span ingestion pipeline (queue, batch writer, spool)."""

    queue_max_spans: int = Field(
        200_000, ge=1_000, description="spans held in memory before back-pressure"
    )
    batch_max_spans: int = Field(
        5_000, ge=1, description="largest batch written in one transaction"
    )
    batch_linger_ms: float = Field(
        200.0,
        ge=0,
        le=5_000,
        description="how long gateway spans wait for company before a batch is written "
        "(OTLP requests, which await their acknowledgement, never wait)",
    )
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest OTLP body, after decompression"
    )
    max_message_chars: int = Field(
        32_000, ge=256, description="cap on stored input/output text per span"
    )
    spool_replay_interval_s: float = Field(
        1.0, gt=0, description="how often a non-empty spool retries the database"
    )
    spool_stale_after_s: float = Field(
        60.0,
        gt=0,
        description="/readyz reports degraded while the spool's oldest record is older than this",
    )
    rollup_fold_interval_ms: float = Field(
        5_000.0,
        ge=0,
        le=60_000,
        description="how often a span writer folds its batches' deferred roll-up counters "
        "into the hourly roll-ups; summaries count unfolded ones too, so this trades write "
        "cost against the size of what a summary reads, never freshness",
    )
    sqlite_synchronous: str = Field(
        "FULL",
        pattern="^(FULL|NORMAL|EXTRA)$",
        description="SQLite's synchronous pragma: FULL loses no acknowledged span on power loss",
    )
    sqlite_cache_mib: int = Field(
        4, ge=1, le=4096, description="page cache of each SQLite connection, in MiB"
    )
    sqlite_heap_limit_mib: int = Field(
        32,
        ge=8,
        le=65536,
        description="soft limit on SQLite's memory in one process, all connections together",
    )
    sqlite_wal_autocheckpoint_pages: int = Field(
        2_500,
        ge=100,
        le=1_000_000,
        description="WAL pages (16 KiB in a database Bastion created) a commit leaves before "
        "it checkpoints them into the database file; more pages mean fewer, cheaper-per-span "
        "checkpoints",
    )


class PriceOverride(BaseModel):
    """Per-project price override for one model, in USD per million tokens."""

    input_usd_per_mtok: float | None = Field(
        None, description="price of input tokens; default the catalog's"
    )
    output_usd_per_mtok: float | None = Field(
        None, description="price of output tokens; default the catalog's"
    )
    cache_read_usd_per_mtok: float | None = Field(
        None, description="price of input tokens read from the provider's prompt cache"
    )
    cache_write_usd_per_mtok: float | None = Field(
        None, description="price of input tokens written to the provider's prompt cache"
    )
    max_input_tokens: int | None = Field(
        None, description="the model's context window, in tokens; default the catalog's"
    )


class GatewaySettings(BaseModel):
    """Tuning of the LLM gateway (its providers and model aliases are top-level sections)."""

    max_request_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest request body the gateway accepts"
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="upstream connect timeout")
    read_timeout_s: float = Field(
        600.0, gt=0, description="longest wait for upstream bytes (head or next chunk)"
    )
    max_connections: int = Field(
        1000, ge=1, description="pooled upstream connections, all providers together"
    )
    simulator: bool = Field(
        False, description="start the provider simulator and register sim-small and sim-large"
    )
    retry_base_delay_s: float = Field(
        0.1, ge=0, description="first retry backoff ceiling; doubles per retry (full jitter)"
    )
    retry_max_delay_s: float = Field(2.0, ge=0, description="largest retry backoff ceiling")
    retry_after_max_s: float = Field(
        5.0,
        ge=0,
        description="longest provider Retry-After the gateway waits; a longer one moves the "
        "request to the next deployment or fallback instead",
    )
    prompt_refresh_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="how often the gateway polls the prompt registry for pushes and label moves",
    )
    budget_default_max_tokens: int = Field(
        4096,
        ge=1,
        description="output tokens a budget reserves for a request that sets no max_tokens",
    )
    redis_prefix: str = Field(
        "bastion:",
        min_length=1,
        max_length=200,
        description="prefix of the gateway's shared rate-limit, budget and breaker keys in Redis",
    )


class TemplateSettings(BaseModel):
    """Limits of one prompt template render (gateway, evals) and of the checks at push."""

    cpu_ms: float = Field(
        50.0,
        gt=0,
        le=60_000,
        description="CPU time one render may use; a project may set its own "
        "(projects.<slug>.template_cpu_ms)",
    )
    max_output_bytes: int | None = Field(
        None,
        ge=1024,
        description="largest rendered prompt, and longest string or list a template may build; "
        "default gateway.max_request_bytes",
    )
    max_nesting: int = Field(
        32,
        ge=4,
        le=48,
        description="deepest nesting of expressions and blocks, of included partials and of "
        "recursive loop calls (Python's own parser bounds it at 48)",
    )


class PluginSettings(BaseModel):
    """Which installed plugins (entry points) may be loaded; bastion's own are always allowed."""

    allow: dict[str, list[str]] | None = Field(
        None,
        description="per entry-point group (e.g. bastion.scorers), the entry-point or "
        "distribution names that may be loaded; a group not listed loads everything installed, "
        "an empty list only bastion's own; unset (the default): everything installed",
    )

    def allowed(self, group: str) -> frozenset[str] | None:
        """The names allowed in ``group``, or None when the group is not restricted."""
        if self.allow is None or group not in self.allow:
            return None
        return frozenset(self.allow[group])


_PERSON_ROLES = ("owner", "admin", "member", "viewer")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class OidcSettings(BaseModel):
    """Single sign-on through an OpenID Connect issuer (authorization code flow with PKCE);
    off while ``issuer`` is unset."""

    issuer: str | None = Field(
        None,
        max_length=500,
        description="the issuer URL (its /.well-known/openid-configuration is read); https, "
        "or http on a loopback address only",
    )
    client_id: str = Field("", max_length=500, description="this server's client id at the issuer")
    client_secret_env: str = Field(
        "BASTION_OIDC_CLIENT_SECRET",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding the client secret (the secret "
        "itself is never written in configuration or logs)",
    )
    redirect_url: str | None = Field(
        None,
        max_length=2000,
        description="the callback URL registered at the issuer; default this server's "
        "/auth/oidc/callback as the browser reached it",
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "email", "profile"],
        description="scopes asked for; must include openid",
    )
    allowed_domains: list[str] = Field(
        default_factory=list,
        description="e-mail domains allowed to sign in (an address the issuer marks "
        "unverified is then refused); empty: any",
    )
    name_claim: str = Field(
        "email", description="the ID token claim a new user is named after (lower-cased)"
    )
    role_claim: str = Field(
        "groups", description="the ID token claim (a string or list) read for role_mapping"
    )
    role_mapping: dict[str, str] = Field(
        default_factory=dict,
        description="claim value -> ROLE (in oidc.project) or PROJECT:ROLE, ROLE one of owner, "
        "admin, member, viewer; applied at every sign-in, the highest role per project wins",
    )
    default_role: Literal["owner", "admin", "member", "viewer"] | None = Field(
        None,
        description="role in oidc.project for a person no mapping matches; unset: such a "
        "person is refused",
    )
    project: str = Field(
        "default", description="the project that plain ROLE mappings and default_role refer to"
    )
    create_users: bool = Field(
        True, description="create a user at the first sign-in (just in time); else refuse"
    )
    timeout_s: float = Field(
        10.0, gt=0, le=120, description="timeout of each request to the issuer"
    )

    @field_validator("issuer")
    @classmethod
    def _issuer_is_https(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute https URL")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            raise ValueError("must use https (http only on a loopback address)")
        if parts.query or parts.fragment:
            raise ValueError("must have no query or fragment")
        return value.rstrip("/")

    @field_validator("role_mapping")
    @classmethod
    def _roles_exist(cls, value: dict[str, str]) -> dict[str, str]:
        for claim, target in value.items():
            project, _, role = target.rpartition(":")
            if role not in _PERSON_ROLES:
                roles = ", ".join(_PERSON_ROLES)
                raise ValueError(f"{claim!r} maps to {target!r}: the role must be one of {roles}")
            if project:
                names.PROJECT.check(project)
        return value

    @field_validator("project")
    @classmethod
    def _project_name(cls, value: str) -> str:
        return names.PROJECT.check(value)


class AuthSettings(BaseModel):
    """Sign-in of people: browser sessions, login throttling and single sign-on."""

    session_idle_s: float = Field(
        8 * 3600, gt=0, description="a session unused for this long ends (idle expiry)"
    )
    session_absolute_s: float = Field(
        7 * 24 * 3600, gt=0, description="a session ends this long after sign-in, used or not"
    )
    session_cache_s: float = Field(
        5.0,
        ge=0,
        le=60,
        description="how long a server process trusts a session it read from the database: a "
        "sign-out, a disabled user or a role changed by another process (the CLI, another "
        "worker) takes effect within this bound; in the process that made the change, at once",
    )
    cookie_secure: bool = Field(
        False,
        description="always mark the session cookie Secure (set it behind a proxy that ends "
        "TLS); it is Secure anyway when the request came over HTTPS",
    )
    login_window_s: float = Field(
        900.0, gt=0, description="the window in which failed sign-ins are counted"
    )
    login_max_failures_per_user: int = Field(
        5, ge=1, description="failed sign-ins for one user name in the window before a 429"
    )
    login_max_failures_per_address: int = Field(
        20, ge=1, description="failed sign-ins from one client address in the window before a 429"
    )
    oidc: OidcSettings = Field(default_factory=OidcSettings, description=OidcSettings.__doc__)


class AuditSettings(BaseModel):
    """The audit log: a hash chain of every change, HMAC-keyed when a secret is configured."""

    secret_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding the audit secret (at least 32 "
        "characters; never logged or stored): records are then chained with HMAC-SHA256, so "
        "whoever can write to the database cannot forge them; unset: plain SHA-256, which "
        "shows accidental or careless changes only",
    )
    retention_days: RetentionDays | None = Field(
        None,
        description="audit records older than this many days are pruned (the chain keeps the "
        "hash of the last pruned record, so what remains still verifies); unset: kept forever",
    )
    system_queue_max: int = Field(
        10_000,
        ge=100,
        le=1_000_000,
        description="automatic decisions of the gateway (breakers, budgets) waiting for the "
        "database at most; more are counted in bastion_audit_system_events_dropped and logged",
    )


class ProjectSettings(BaseModel):
    """Configuration that applies to one project only (keyed by the project's slug)."""

    prices: dict[str, PriceOverride] = Field(
        default_factory=dict, description="price overrides for this project, by model name"
    )
    template_cpu_ms: float | None = Field(
        None,
        gt=0,
        le=60_000,
        description="CPU time one prompt template render of this project may use; "
        "default templates.cpu_ms",
    )
    retention: RetentionPolicy = Field(
        default_factory=RetentionPolicy, description=RetentionPolicy.__doc__
    )
    approvals: ApprovalPolicy = Field(
        default_factory=ApprovalPolicy, description=ApprovalPolicy.__doc__
    )


class Settings(BaseSettings):
    """Everything the server, CLI and workers read from configuration."""

    model_config = SettingsConfigDict(
        env_prefix="BASTION_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(Path(".bastion"), description="state directory: SQLite file, spool, caches")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default is SQLite under home"
    )
    redis_url: str | None = Field(
        None,
        description="Redis shared by gateway replicas for rate limits, budgets and breakers; "
        "without it each host keeps them itself, shared by its worker processes",
    )
    host: str = Field("127.0.0.1", description="interface the server listens on")
    port: int = Field(8700, ge=0, le=65535, description="port the server listens on")
    log_level: str = Field("INFO", description="level of the server's log (Python logging)")
    workers: int = Field(
        1, ge=1, le=64, description="server processes sharing the port (SO_REUSEPORT)"
    )
    gc_young_threshold: int = Field(
        50_000,
        ge=700,
        le=10_000_000,
        description="net container allocations before a server process looks for reference "
        "cycles (Python's default is 700, which made collection a fifth of ingest time)",
    )
    worker_index: int | None = Field(
        None, exclude=True, description="set inside a worker process: which one it is"
    )
    limits_socket: str | None = Field(
        None,
        exclude=True,
        description="set inside a worker process: the Unix socket of the host's rate-limit "
        "and budget ledger, held by the supervising process (serve --workers N without Redis)",
    )
    ingest: IngestSettings = Field(
        default_factory=IngestSettings, description=IngestSettings.__doc__
    )
    gateway: GatewaySettings = Field(
        default_factory=GatewaySettings, description=GatewaySettings.__doc__
    )
    templates: TemplateSettings = Field(
        default_factory=TemplateSettings, description=TemplateSettings.__doc__
    )
    limits: InputLimits = Field(
        default_factory=InputLimits,
        description="caps on every document parsed from user input (datasets, YAML, JSON, CSV)",
    )
    prices: dict[str, PriceOverride] = Field(
        default_factory=dict, description="price overrides for every project, by model name"
    )
    projects: dict[str, ProjectSettings] = Field(
        default_factory=dict, description="per-project settings, by project slug"
    )
    plugins: PluginSettings = Field(
        default_factory=PluginSettings, description=PluginSettings.__doc__
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, description=RetentionSettings.__doc__
    )
    auth: AuthSettings = Field(default_factory=AuthSettings, description=AuthSettings.__doc__)
    audit: AuditSettings = Field(default_factory=AuditSettings, description=AuditSettings.__doc__)
    config_path: Path | None = Field(
        None, exclude=True, description="the bastion.yaml these settings were read from, if any"
    )
    sections: dict[str, Any] = Field(
        default_factory=dict, exclude=True, description="component sections of bastion.yaml, raw"
    )
    config_lines: dict[str, int] = Field(
        default_factory=dict, exclude=True, description="line of each dotted key in bastion.yaml"
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'bastion.db').resolve()}"

    @property
    def spool_dir(self) -> Path:
        """This process's spool: each worker of ``serve --workers N`` has its own."""
        root = self.home / "spool"
        return root if self.worker_index is None else root / f"worker-{self.worker_index}"

    def where(self, key: str) -> str:
        """``"bastion.yaml:12: "`` for a dotted config key, for error messages; else ``""``."""
        if self.config_path is None:
            return ""
        line = self.config_lines.get(key)
        return f"{self.config_path}:{line}: " if line else f"{self.config_path}: "

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over explicit (file) values: twelve-factor.
        return (env_settings, init_settings)


def _yaml_with_lines(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse YAML and remember the line of every top-level and nested mapping key.

    The file configures the caps, so it is held to the default ones.
    """
    try:
        document = parse_yaml(read_bounded(path, InputLimits(), encoding="utf-8"))
    except InputError as exc:
        where = f"{path}:{exc.line}" if exc.line is not None else str(path)
        raise ConfigError(f"{where}: {exc.problem}") from exc
    node, data = document.node, document.data
    lines: dict[str, int] = {}

    def walk(n: yaml.Node | None, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, f"{prefix}.{i}")

    walk(node, "")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data, lines


# Sections that other components own; the settings object keeps them verbatim for them to validate.
_PASSTHROUGH_SECTIONS = frozenset(
    {
        "providers",
        "models",
        "budgets",
        "rate_limits",
        "cache",
        "prompts",
        "evals",
        "releases",
    }
)


def load_settings(config_path: Path | str | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``bastion.yaml`` (if any) and the environment.

    ``config_path`` defaults to ``$BASTION_HOME/bastion.yaml`` when that file exists.
    Keyword ``overrides`` act like file values (the environment still wins).
    """
    path: Path | None = Path(config_path) if config_path else None
    if path is None:
        home = Path(os.environ.get("BASTION_HOME", overrides.get("home", ".bastion")))
        candidate = home / "bastion.yaml"
        path = candidate if candidate.is_file() else None
    elif not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    file_values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        file_values, lines = _yaml_with_lines(path)
        known = set(Settings.model_fields) | _PASSTHROUGH_SECTIONS
        for key in file_values:
            if key not in known:
                raise ConfigError(f"{path}:{lines.get(key, '?')}: unknown key {key!r}")
        sections = {k: v for k, v in file_values.items() if k in _PASSTHROUGH_SECTIONS}
        file_values = {k: v for k, v in file_values.items() if k in Settings.model_fields}
    else:
        sections = {}
    values = {**file_values, **overrides}
    try:
        settings = Settings(**values, config_path=path, sections=sections, config_lines=lines)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        where = f"{path}:{lines[key]}: " if path is not None and key in lines else ""
        raise ConfigError(f"{where}invalid value for {key!r}: {first['msg']}") from exc
    return settings
