"""Settings, read once from the environment (prefix OFFLOAD_) by the entrypoints and passed down."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from domain.registry import Registry

MIN_SECRET_CHARS = 16
#: The longest a duration in seconds may be set to; a day is more than any of them needs.
MAX_SECONDS = 86_400.0
#: The longest a retention may be set to: a century keeps every row, and `now - days` stays a date.
MAX_RETENTION_DAYS = 36_500.0


#: The exit code of a process that refuses to start (a bad setting, a port in use, no broker).
REFUSED = 2


class SettingsError(Exception):
    """Settings that cannot work; the message is one line naming the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore", env_ignore_empty=True)

    database_url: str = "sqlite:///offload.db"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    management_url: str = "http://guest:guest@127.0.0.1:15672"
    inline: bool = False
    inline_jobs: Annotated[frozenset[str], NoDecode] = frozenset()
    lease_grace_s: float = Field(30.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    worker_processes: int = Field(2, ge=1)
    worker_threads: int = Field(8, ge=1)
    # -- web ingress (offload web) --
    #: Bearer token of the cron routes; also read from CRON_SECRET. Unset: the routes answer 503.
    cron_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("cron_secret", "OFFLOAD_CRON_SECRET")
    )
    #: Standard Webhooks signing secret, `whsec_<base64>`; takes precedence over the shared secret.
    webhook_signing_secret: SecretStr | None = None
    #: Simpler alternative: the sender puts this value in the X-Webhook-Secret header.
    webhook_shared_secret: SecretStr | None = None
    webhook_body_cap_bytes: int = Field(256 * 1024, ge=1024)
    webhook_tolerance_s: int = Field(300, ge=1)
    #: Event types processed in the request (after persisting) instead of by a worker; default none.
    webhook_inline_types: Annotated[frozenset[str], NoDecode] = frozenset()
    web_host: str = "127.0.0.1"
    web_port: int = Field(8000, ge=0, le=65535)
    web_threads: int = Field(8, ge=1)

    # -- providers --
    #: The calendar provider and the sending platform; unset means the local, database-backed ones.
    calendar_url: str | None = None
    calendar_api_key: SecretStr | None = Field(None, validate_default=True)
    sending_platform_url: str | None = None
    sending_platform_api_key: SecretStr | None = Field(None, validate_default=True)
    provider_timeout_s: float = Field(10.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    provider_max_attempts: int = Field(3, ge=1)
    provider_backoff_s: float = Field(0.5, ge=0, le=MAX_SECONDS, allow_inf_nan=False)

    # -- scheduling (offload scheduler) --
    #: job -> cron expression (or null: never scheduled), as JSON, overriding the registry's.
    schedules: dict[str, str | None] = Field(default_factory=dict)
    scheduler_grace_s: float = Field(60.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    #: At least a day: a restarted scheduler settles the slots of its missed-slot window (up to a
    #: day) from the latest slot on the ledger, and a late copy of a message finds its run's key,
    #: so neither runs a slot twice.
    ledger_retention_days: float = Field(30.0, ge=1, le=MAX_RETENTION_DAYS, allow_inf_nan=False)
    run_event_retention_days: float = Field(30.0, gt=0, le=MAX_RETENTION_DAYS, allow_inf_nan=False)

    @field_validator("inline_jobs", "webhook_inline_types", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg"):
            raise ValueError(f"expected a sqlite:/// or postgresql+psycopg:// URL, got scheme {scheme!r}")
        try:
            _ = urlsplit(value).port  # a host may be left out (a Unix socket), a port must be a port
        except ValueError:
            raise ValueError(f"the port is not a port in {redact(value)!r}") from None
        if scheme in ("postgresql", "postgres"):
            return "postgresql+psycopg" + value[len(scheme) :]
        return value

    @field_validator("cron_secret", "webhook_shared_secret", "webhook_signing_secret", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        # A secret read from a file often ends in a newline, and a header can carry no surrounding
        # whitespace (servers strip it): kept, the secret could never be presented.
        return value.strip() if isinstance(value, str) else value

    @field_validator("cron_secret", "webhook_shared_secret")
    @classmethod
    def _presentable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        if len(text) < MIN_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SECRET_CHARS} characters")
        if not (text.isascii() and text.isprintable()):
            # HTTP clients put other characters in a header in encodings of their own choosing
            raise ValueError("must be printable ASCII, which every HTTP client sends the same way")
        return value

    @field_validator("webhook_signing_secret")
    @classmethod
    def _signing_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        if not text.startswith("whsec_"):
            raise ValueError("expected a Standard Webhooks secret of the form whsec_<base64>")
        try:
            key = base64.b64decode(text[len("whsec_") :], validate=True)
        except binascii.Error:
            raise ValueError("the part after whsec_ is not valid base64") from None
        if len(key) < 16:
            raise ValueError("the signing key must be at least 16 bytes")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        _checked(value, ("amqp", "amqps"), "an amqp://")
        import pika

        from actors.amqp_url import with_connection_defaults

        try:  # the query's options, read as the broker's connections will read them
            pika.URLParameters(with_connection_defaults(value))
        except (ValueError, TypeError, SyntaxError) as e:
            raise ValueError(f"a query option pika cannot read ({e}) in {redact(value)!r}") from None
        return value

    @field_validator("management_url")
    @classmethod
    def _management(cls, value: str) -> str:
        _checked(value, ("http", "https"), "an http(s)://")
        return value.rstrip("/")

    @field_validator("calendar_url", "sending_platform_url")
    @classmethod
    def _provider_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        _checked(value, ("http", "https"), "an http(s)://")
        return value.rstrip("/")

    @field_validator("calendar_api_key", "sending_platform_api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        url_field = str(info.field_name).replace("_api_key", "_url")
        if info.data.get(url_field) and not (value and value.get_secret_value()):
            raise ValueError(f"required when OFFLOAD_{url_field.upper()} is set")
        return value

    def check_jobs(self, names: list[str]) -> None:
        """Every job a flag names must exist."""
        unknown = sorted(self.inline_jobs - set(names))
        if unknown:
            raise SettingsError(
                f"OFFLOAD_INLINE_JOBS names unknown job(s) {', '.join(unknown)}; known: {', '.join(names)}"
            )
        from domain.webhooks import KNOWN_TYPES

        unknown = sorted(self.webhook_inline_types - set(KNOWN_TYPES))
        if unknown:
            raise SettingsError(
                f"OFFLOAD_WEBHOOK_INLINE_TYPES names unknown event type(s) {', '.join(unknown)}; "
                f"known: {', '.join(KNOWN_TYPES)}"
            )

    def scheduled(self, registry: Registry) -> Registry:
        """`registry` with OFFLOAD_SCHEDULES applied; SettingsError names a bad job or expression."""
        try:
            return registry.rescheduled(self.schedules)
        except ValueError as e:
            raise SettingsError(f"OFFLOAD_SCHEDULES: {e}") from None

    @classmethod
    def load(cls) -> Settings:
        """Read the environment; raise SettingsError with one line for the first bad value."""
        try:
            return cls()
        except PydanticSettingsError as e:
            # "error parsing value for field "schedules" from source ...": a JSON value that is not JSON
            parsed = re.search(r'field "(\w+)"', str(e))
            if parsed is None:
                raise SettingsError(str(e).splitlines()[0]) from None
            cause = f" ({e.__cause__})" if e.__cause__ else ""
            raise SettingsError(f"{_env_name(parsed.group(1))}: not valid JSON{cause}") from None
        except ValidationError as e:
            err = e.errors()[0]
            name = _env_name(str(err["loc"][0])) if err["loc"] else "?"
            raise SettingsError(f"{name}: {err['msg'].removeprefix('Value error, ')}") from None


def _env_name(field: str) -> str:
    """The variable a field is read from, as the user would have set it."""
    field = field.upper().removeprefix("OFFLOAD_")
    return "OFFLOAD_CRON_SECRET (or CRON_SECRET)" if field == "CRON_SECRET" else f"OFFLOAD_{field}"


def redact(url: str) -> str:
    """A URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def _checked(url: str, schemes: tuple[str, ...], what: str) -> None:
    """ValueError unless `url` has one of `schemes`, a host and, if any, a port that is a port."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in schemes or not parts.hostname or not port_ok:
        raise ValueError(f"expected {what} URL with a host and a valid port, got {redact(url)!r}")
