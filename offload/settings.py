"""Settings, read once from the environment (prefix OFFLOAD_) by the entrypoints and passed down."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    #: The calendar provider and the sending platform; unset means the local, database-backed ones.
    calendar_url: str | None = None
    calendar_api_key: SecretStr | None = Field(None, validate_default=True)
    sending_platform_url: str | None = None
    sending_platform_api_key: SecretStr | None = Field(None, validate_default=True)
    provider_timeout_s: float = Field(10.0, gt=0)
    provider_max_attempts: int = Field(3, ge=1)
    provider_backoff_s: float = Field(0.5, ge=0)

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

    @field_validator("calendar_url", "sending_platform_url")
    @classmethod
    def _provider_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s):// URL with a host, got {value!r}")
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

    @classmethod
    def load(cls) -> Settings:
        """Read the environment; raise SettingsError with one line for the first bad value."""
        try:
            return cls()
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
