"""Settings, read once from the environment (prefix OFFLOAD_) by the entrypoints and passed down."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from domain.registry import Registry


class SettingsError(Exception):
    """Settings that cannot work; the message is one line naming the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore")

    database_url: str = "sqlite:///offload.db"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    management_url: str = "http://guest:guest@127.0.0.1:15672"
    inline: bool = False
    inline_jobs: Annotated[frozenset[str], NoDecode] = frozenset()
    lease_grace_s: float = Field(30.0, gt=0)
    worker_processes: int = Field(2, ge=1)
    worker_threads: int = Field(8, ge=1)
    #: job -> cron expression (or null: never scheduled), as JSON, overriding the registry's.
    schedules: dict[str, str | None] = Field(default_factory=dict)
    scheduler_grace_s: float = Field(60.0, gt=0)
    ledger_retention_days: float = Field(30.0, gt=0)
    run_event_retention_days: float = Field(30.0, gt=0)

    @field_validator("inline_jobs", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
            raise ValueError(f"expected a sqlite:/// or postgresql+psycopg:// URL, got scheme {scheme!r}")
        if scheme in ("postgresql", "postgres"):
            return "postgresql+psycopg" + value[len(scheme) :]
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError(f"expected an amqp:// URL with a host, got {value!r}")
        return value

    @field_validator("management_url")
    @classmethod
    def _management(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// URL with a host, got {value!r}")
        return value.rstrip("/")

    def check_jobs(self, names: list[str]) -> None:
        """Every job a flag names must exist."""
        unknown = sorted(self.inline_jobs - set(names))
        if unknown:
            raise SettingsError(
                f"OFFLOAD_INLINE_JOBS names unknown job(s) {', '.join(unknown)}; known: {', '.join(names)}"
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
            raise SettingsError(str(e).splitlines()[0]) from None
        except ValidationError as e:
            err = e.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "?"
            raise SettingsError(f"OFFLOAD_{field.upper()}: {err['msg']}") from None


def redact(url: str) -> str:
    """A URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
