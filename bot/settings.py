"""Configuration from the environment, validated once at start."""

import posixpath
import re
from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.secrets import decode_secret_key
from bot.task import LeasePolicy

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
#: The longest duration accepted for a lease or an interval: one year, in seconds.
MAX_DURATION_S = 365 * 24 * 3600.0
_DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")
#: A THREADWORK_MODEL_HOSTS entry: a host name or address, optionally with a port.
_MODEL_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?$")


class Settings(BaseSettings):
    """Every setting threadwork reads. Durations are seconds; any positive value is accepted."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    database_url: str = Field("sqlite:///threadwork.db", alias="DATABASE_URL")
    host: str = Field("127.0.0.1", alias="HOST")
    port: int = Field(3000, alias="PORT", ge=1, le=65535)
    slack_bot_token: SecretStr | None = Field(None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(None, alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(DEFAULT_SLACK_API_URL, alias="SLACK_API_URL")
    lease_ttl: float = Field(
        600, alias="THREADWORK_LEASE_TTL", gt=0, le=MAX_DURATION_S, allow_inf_nan=False
    )
    reconcile_interval: float = Field(
        60, alias="THREADWORK_RECONCILE_INTERVAL", gt=0, le=MAX_DURATION_S, allow_inf_nan=False
    )
    max_dispatch_attempts: int = Field(2, alias="THREADWORK_MAX_DISPATCH_ATTEMPTS", ge=1)
    admins: Annotated[tuple[str, ...], NoDecode] = Field((), alias="THREADWORK_ADMINS")
    #: Whether the workspace's own admins and owners are threadwork admins too.
    workspace_admins: bool = Field(False, alias="THREADWORK_WORKSPACE_ADMINS")
    secret_key: SecretStr | None = Field(None, alias="THREADWORK_SECRET_KEY")
    #: The key before a rotation: it still decrypts, until `threadwork secrets rotate` ran.
    secret_key_previous: SecretStr | None = Field(None, alias="THREADWORK_SECRET_KEY_PREVIOUS")
    #: Where people and agents reach threadwork (https://threadwork.example.com): the MCP
    #: endpoint accepts this Host and Origin, besides the bound HOST and loopback.
    public_url: str | None = Field(None, alias="THREADWORK_PUBLIC_URL")
    #: When set, the only hosts built-in agents' model endpoints may be on (keys go nowhere else).
    model_hosts: Annotated[tuple[str, ...], NoDecode] = Field((), alias="THREADWORK_MODEL_HOSTS")
    anthropic_api_key: SecretStr | None = Field(None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(None, alias="ANTHROPIC_BASE_URL")
    #: Unset: the MCP endpoint is served at /mcp on PORT. A port: on that port instead. 0: off.
    mcp_port: int | None = Field(None, alias="THREADWORK_MCP_PORT", ge=0, le=65535)
    agent_max_steps: int = Field(20, alias="THREADWORK_AGENT_MAX_STEPS", ge=1, le=1000)
    #: The most MCP tool servers one built-in agent may have (``/task-admin agent tools``).
    agent_tool_servers: int = Field(8, alias="THREADWORK_AGENT_TOOL_SERVERS", ge=1, le=64)
    #: Seconds a built-in agent's tool server may take to start and list its tools.
    tool_server_start_timeout: float = Field(
        30.0, alias="THREADWORK_TOOL_SERVER_START_TIMEOUT", gt=0, le=600
    )
    #: Seconds one call of a tool server's tool may take before the model is told it timed out.
    tool_call_timeout: float = Field(60.0, alias="THREADWORK_TOOL_CALL_TIMEOUT", gt=0, le=3600)
    #: The executables a stdio tool server may run, by name or absolute path; empty: stdio off.
    tool_server_commands: Annotated[tuple[str, ...], NoDecode] = Field(
        (), alias="THREADWORK_TOOL_SERVER_COMMANDS"
    )
    #: The hosts an http tool server may be at; empty: any https host, plain http on loopback.
    tool_server_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), alias="THREADWORK_TOOL_SERVER_HOSTS"
    )
    #: Tool calls an external agent's token may make per minute.
    agent_calls_per_minute: int = Field(
        120, alias="THREADWORK_AGENT_CALLS_PER_MINUTE", ge=1, le=100_000
    )

    #: A worker (one process) whose heartbeat is older than this is presumed dead, and what it
    #: held (outbox rows, agent wake-ups and runs) is taken over by a live one.
    worker_timeout: float = Field(
        15, alias="THREADWORK_WORKER_TIMEOUT", ge=1, le=3600, allow_inf_nan=False
    )
    #: Thread reads (conversations.replies/history) per minute, shared by every replica: 50 for
    #: an internal app (Tier 3), 1 for a commercially distributed app outside the Marketplace.
    slack_history_per_minute: int = Field(
        50, alias="THREADWORK_SLACK_HISTORY_PER_MINUTE", ge=1, le=10_000
    )

    @field_validator("admins", mode="before")
    @classmethod
    def _split_admins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_is_supported(cls, value: str) -> str:
        scheme = value.partition("://")[0].partition("+")[0].lower()
        if scheme not in _DATABASE_SCHEMES or "://" not in value:
            raise ValueError("must be a sqlite:///path.db or postgresql://... URL")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("secret_key")
    @classmethod
    def _secret_key_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        decode_secret_key(value.get_secret_value())
        return SecretStr(value.get_secret_value().strip())

    @field_validator("secret_key_previous")
    @classmethod
    def _previous_key_needs_a_key(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if info.data.get("secret_key") is None:
            raise ValueError("needs THREADWORK_SECRET_KEY set too (the key to rotate to)")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("public_url")
    @classmethod
    def _public_url_is_an_origin(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = urlsplit(value.strip())
        try:
            url.port  # noqa: B018  # read for its check: raises ValueError for a bad port
        except ValueError:
            raise ValueError("has a port that is not a number from 0 to 65535") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must be an http(s) URL such as https://threadwork.example.com")
        if url.username or url.password or url.query or url.fragment:
            raise ValueError(
                "must be just scheme, host and port, like https://threadwork.example.com"
            )
        return value.strip().rstrip("/")

    @field_validator("model_hosts", mode="before")
    @classmethod
    def _split_model_hosts(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        hosts = tuple(part.strip().lower() for part in value.split(",") if part.strip())
        for host in hosts:
            if not _MODEL_HOST.match(host):
                raise ValueError(
                    "must be host names (api.anthropic.com or 127.0.0.1:11434), comma-separated, "
                    "not URLs"
                )
        return hosts

    @field_validator("tool_server_commands", mode="before")
    @classmethod
    def _split_tool_server_commands(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        commands = tuple(part.strip() for part in value.split(",") if part.strip())
        for command in commands:
            named = "/" not in command and not any(ch.isspace() for ch in command)
            absolute = command.startswith("/") and posixpath.normpath(command) == command
            if not (named or absolute):
                raise ValueError(
                    "must be executables by name (mcp-server-git) or absolute path "
                    "(/usr/local/bin/mcp-server-git), comma-separated"
                )
        return commands

    @field_validator("tool_server_hosts", mode="before")
    @classmethod
    def _split_tool_server_hosts(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        hosts = tuple(part.strip().lower() for part in value.split(",") if part.strip())
        for host in hosts:
            if not _MODEL_HOST.match(host):  # the same form as THREADWORK_MODEL_HOSTS
                raise ValueError(
                    "must be host names (tools.example.com or 127.0.0.1:8931), comma-separated, "
                    "not URLs"
                )
        return hosts

    @property
    def lease_policy(self) -> LeasePolicy:
        return LeasePolicy(
            lease_ttl=timedelta(seconds=self.lease_ttl),
            max_dispatch_attempts=self.max_dispatch_attempts,
        )


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


def load_settings() -> Settings:
    """Reads the environment, or raises SettingsError naming the first bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        variable = str(error["loc"][0]) if error["loc"] else "configuration"
        raise SettingsError(f"{variable}: {error['msg']}") from None
