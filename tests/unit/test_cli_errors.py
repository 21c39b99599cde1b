"""The `offload` command line answers bad options and database failures with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain import keys
from domain.runs import RunStatus
from store import db
from store.ledger import NewRun, SqlLedger
from tests.support.fake_api import FakeApi
from tests.support.procs import ROOT, run_cli


def test_a_database_without_migrations_says_which_and_how_to_migrate_it(tmp_path: Path) -> None:
    env = {"OFFLOAD_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    result = run_cli(env, "runs")
    assert result.returncode == 1
    database = f"sqlite:///{tmp_path / 'fresh.db'}"
    hint = "not migrated (run `offload db upgrade` against it)"
    assert result.stderr.startswith(f"offload: database {database}, {hint}: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert run_cli(env, "db", "upgrade").returncode == 0
    assert run_cli(env, "runs").returncode == 0


def test_an_unreachable_database_is_one_line_without_a_migration_hint() -> None:
    result = run_cli({"OFFLOAD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/test"}, "runs")
    assert result.returncode == 1
    assert result.stderr.startswith("offload: database postgresql+psycopg://postgres@127.0.0.1:1/test: ")
    assert "port 1" in result.stderr
    assert "migrate" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_relative_sqlite_path_is_named_where_it_resolves(tmp_path: Path) -> None:
    """`./offload.db` is relative to where offload runs: from another directory it is another file."""
    result = run_cli({"OFFLOAD_DATABASE_URL": "sqlite:///no/such/dir/x.db"}, "runs")
    assert result.returncode == 1
    assert f"sqlite:///no/such/dir/x.db (that is {ROOT / 'no/such/dir/x.db'})" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("runs", "--status", "bogus"), "Invalid value for '--status': 'bogus' is not one of"),
        (("runs", "--limit", "0"), "Invalid value for '--limit'"),
        (("dispatch", "nope"), "unknown job 'nope'; known: background-jobs"),
        (("dispatch", "background-jobs", "-p", "novalue"), "expected KEY=VALUE, got 'novalue'"),
        # JSON has no NaN or infinity: stored, an export would print a line that is not JSON.
        (("dispatch", "background-jobs", "-p", "k=NaN"), "--param: NaN is not a finite number"),
        (("dispatch", "background-jobs", "-p", "k=-Infinity"), "--param: -Infinity is not a finite number"),
        (("dispatch", "background-jobs", "-p", "k=[1e999]"), "--param: 1e999 is not a finite number"),
        (("export", "--since", "9999-12-31T23:59:59-0500"), "--since: 9999-12-31T23:59:59-05:00 has no time"),
        (("web", "--port", "70000"), "Invalid value for '--port': 70000 is not in the range 0<=x<=65535"),
        (("web", "--port", "-1"), "Invalid value for '--port'"),
        (("web", "--threads", "-3"), "Invalid value for '--threads'"),
        (("worker", "--processes", "0"), "Invalid value for '--processes'"),
        (("worker", "--threads", "-3"), "Invalid value for '--threads'"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    result = run_cli({"OFFLOAD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}, *args)
    assert result.returncode == 2
    assert fragment in result.stderr


def dead_run(url: str, job: str) -> str:
    """Migrate the database at `url` and record one dead run of `job`; its dispatch key."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    key = keys.dispatch_key(job, None, {"n": 1})
    ledger = SqlLedger(engine)
    ledger.record_dispatch(NewRun(job, key, keys.message_id(key), "c", "cli", "queue", None, {"n": 1}))
    ledger.finish(key, RunStatus.DEAD, token=None, detail="poison")
    engine.dispose()
    return key


def test_a_replay_the_broker_does_not_take_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    key = dead_run(url, "background-jobs")
    env = {"OFFLOAD_DATABASE_URL": url, "OFFLOAD_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    result = run_cli(env, "replay", key)
    assert result.returncode == 3
    assert result.stderr.startswith("offload: could not publish to RabbitMQ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_replay_of_a_job_no_longer_registered_is_a_usage_error(tmp_path: Path) -> None:
    """The ledger keeps the runs of a job the registry has since dropped; `runs` and `export` list them."""
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    key = dead_run(url, "retired-job")
    result = run_cli({"OFFLOAD_DATABASE_URL": url}, "replay", key)
    assert result.returncode == 2
    assert f"run {key!r} is of job 'retired-job', which is no longer registered" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["runs", "export"])
def test_a_job_neither_registered_nor_on_the_ledger_is_a_usage_error(tmp_path: Path, command: str) -> None:
    env = {"OFFLOAD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    assert run_cli(env, "db", "upgrade").returncode == 0
    result = run_cli(env, command, "--job", "followup")
    assert result.returncode == 2
    assert "unknown job 'followup'; known: background-jobs" in result.stderr
    assert run_cli(env, command, "--job", "followups").returncode == 0


@pytest.mark.parametrize("command", ["status", "verify"])
@pytest.mark.parametrize(
    "answer", [b"<html>not the management API</html>", b'{"queues": []}'], ids=["html", "other-json"]
)
def test_a_management_url_that_is_not_rabbitmqs_api_is_one_line(
    tmp_path: Path, command: str, answer: bytes
) -> None:
    """A server that answers, but is not RabbitMQ (another service, a proxy's page): not a traceback."""
    env = {"OFFLOAD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    assert run_cli(env, "db", "upgrade").returncode == 0
    api = FakeApi()
    try:
        api.plan("GET", "/api/queues/%2F", (200, answer, 0.0))
        result = run_cli(env | {"OFFLOAD_MANAGEMENT_URL": api.url}, command)
    finally:
        api.close()
    assert result.returncode == 3
    assert result.stderr.strip() == (
        f"offload: {api.url} answered, but not as the RabbitMQ management API; check OFFLOAD_MANAGEMENT_URL"
    )
