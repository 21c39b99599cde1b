"""Bad settings stop start-up with one clear line."""

from __future__ import annotations

import pytest

from ingress.auth import CronAuth
from offload.settings import Settings, SettingsError
from tests.support.procs import run_cli


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"OFFLOAD_INLINE_JOBS": "followupz"}, "OFFLOAD_INLINE_JOBS names unknown job(s) followupz"),
        ({"OFFLOAD_BROKER_URL": "http://localhost"}, "OFFLOAD_BROKER_URL"),
        ({"OFFLOAD_DATABASE_URL": "mysql://x/y"}, "OFFLOAD_DATABASE_URL"),
        ({"OFFLOAD_MANAGEMENT_URL": "not a url"}, "OFFLOAD_MANAGEMENT_URL"),
        ({"OFFLOAD_WORKER_THREADS": "0"}, "OFFLOAD_WORKER_THREADS"),
        (
            {"OFFLOAD_BROKER_URL": "amqp://guest:secret@127.0.0.1:99999/%2F"},
            "amqp://guest:***@127.0.0.1:99999",
        ),
        ({"OFFLOAD_BROKER_URL": "amqp://127.0.0.1:abc/%2F"}, "OFFLOAD_BROKER_URL"),
        ({"OFFLOAD_MANAGEMENT_URL": "http://guest:guest@127.0.0.1:99999"}, "OFFLOAD_MANAGEMENT_URL"),
        ({"OFFLOAD_DATABASE_URL": "postgresql+psycopg2://u@h/db"}, "got scheme 'postgresql+psycopg2'"),
        ({"OFFLOAD_DATABASE_URL": "postgresql://u@h:port/db"}, "the port is not a port"),
        ({"OFFLOAD_SCHEDULES": "{bad"}, "offload: OFFLOAD_SCHEDULES: not valid JSON"),
        (
            {"OFFLOAD_LEDGER_RETENTION_DAYS": "0.5"},
            "OFFLOAD_LEDGER_RETENTION_DAYS: Input should be greater than",
        ),
        ({"CRON_SECRET": "short"}, "offload: OFFLOAD_CRON_SECRET (or CRON_SECRET): must be at least 16"),
        ({"OFFLOAD_CRON_SECRET": "short"}, "offload: OFFLOAD_CRON_SECRET (or CRON_SECRET): must be at least"),
        # Each below used to pass start-up, then crash the first dispatch with a traceback.
        ({"OFFLOAD_LEASE_GRACE_S": "inf"}, "OFFLOAD_LEASE_GRACE_S: Input should be a finite number"),
        ({"OFFLOAD_LEASE_GRACE_S": "1e300"}, "OFFLOAD_LEASE_GRACE_S: Input should be less than or equal to"),
        (
            {"OFFLOAD_LEDGER_RETENTION_DAYS": "1e9"},
            "OFFLOAD_LEDGER_RETENTION_DAYS: Input should be less than",
        ),
        (
            {"OFFLOAD_BROKER_URL": "amqp://guest:secret@127.0.0.1:5672/%2F?heartbeat=abc"},
            "OFFLOAD_BROKER_URL: a query option pika cannot read (Invalid heartbeat value 'abc'",
        ),
        (
            {"OFFLOAD_SCHEDULES": '{"background-jobs": "0 0 31 2 *"}'},
            "OFFLOAD_SCHEDULES: job 'background-jobs': cron expression '0 0 31 2 *' never fires",
        ),
        (
            {"OFFLOAD_SCHEDULES": '{"webhook-drain": "* * * * *"}'},
            "OFFLOAD_SCHEDULES: job 'webhook-drain' is only triggered, never scheduled",
        ),
        # HTTP clients send a header's other characters in encodings of their own: no one could match.
        ({"CRON_SECRET": "cron-secret-\u20ac-0123456789"}, "(or CRON_SECRET): must be printable ASCII"),
        (
            {"OFFLOAD_WEBHOOK_SHARED_SECRET": "shared-secret-\u20ac-0123456789"},
            "offload: OFFLOAD_WEBHOOK_SHARED_SECRET: must be printable ASCII",
        ),
    ],
)
def test_bad_setting_refuses_to_start_with_one_line(env: dict[str, str], fragment: str) -> None:
    result = run_cli(env, "jobs")
    assert result.returncode == 2
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Value error" not in result.stderr and "EnvSettingsSource" not in result.stderr


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_scheme_is_pinned_to_psycopg3(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    monkeypatch.setenv("OFFLOAD_DATABASE_URL", f"{scheme}://u@h/db")
    assert Settings.load().database_url == "postgresql+psycopg://u@h/db"


def test_unknown_inline_job_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="nope"):
        Settings(inline_jobs=frozenset({"nope"})).check_jobs(["background-jobs"])


def test_worker_without_rabbitmq_says_how_to_start_it() -> None:
    result = run_cli({"OFFLOAD_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}, "worker")
    assert result.returncode == 2
    assert "rabbitmq-server -detached" in result.stderr and "guest:***" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_inline_mode_needs_no_broker(tmp_path: object) -> None:
    import json
    from pathlib import Path

    db = f"sqlite:///{Path(str(tmp_path)) / 'inline.db'}"
    env = {"OFFLOAD_DATABASE_URL": db, "OFFLOAD_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    assert run_cli(env, "db", "upgrade").returncode == 0
    result = run_cli({**env, "OFFLOAD_INLINE": "true"}, "dispatch", "background-jobs")
    assert result.returncode == 0, result.stderr
    dispatch = json.loads(result.stdout)["dispatch"]
    assert (dispatch["mode"], dispatch["status"]) == ("inline", "succeeded")
    queued = run_cli(env, "dispatch", "background-jobs", "-p", "x=1")
    assert queued.returncode == 3
    assert queued.stderr.strip().splitlines() == [queued.stderr.strip()], "one line"
    assert "could not publish to RabbitMQ at amqp://guest:***@127.0.0.1:1" in queued.stderr


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # compose passes `${OFFLOAD_WEBHOOK_SIGNING_SECRET:-}`: empty must not be read as a bad secret.
    monkeypatch.setenv("OFFLOAD_WEBHOOK_SIGNING_SECRET", "")
    assert Settings.load().webhook_signing_secret is None


def test_a_refused_write_is_a_500_and_an_unreachable_database_a_503() -> None:
    import falcon
    from falcon import testing

    from ingress.errors import store_error
    from store.errors import StoreError, StoreUnavailable

    for error, status in (
        (StoreUnavailable("down"), falcon.HTTP_503),
        (StoreError("bad data"), falcon.HTTP_500),
    ):
        resp = falcon.Response()
        store_error(testing.create_req(), resp, error, {})
        assert resp.status == status


def test_a_secret_read_with_a_trailing_newline_is_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header carries no surrounding whitespace: a secret file's newline would make the secret unusable."""
    secret, signing = "cron-secret-0123456789abcdef", "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZg=="
    monkeypatch.setenv("CRON_SECRET", f" {secret}\n")
    monkeypatch.setenv("OFFLOAD_WEBHOOK_SHARED_SECRET", f"{secret}\n")
    monkeypatch.setenv("OFFLOAD_WEBHOOK_SIGNING_SECRET", f"{signing}\n")
    settings = Settings.load()
    assert settings.cron_secret is not None and settings.cron_secret.get_secret_value() == secret
    assert settings.webhook_shared_secret is not None
    assert settings.webhook_shared_secret.get_secret_value() == secret
    assert settings.webhook_signing_secret is not None
    assert settings.webhook_signing_secret.get_secret_value() == signing
    CronAuth(secret=secret).check(f"Bearer {secret}")
