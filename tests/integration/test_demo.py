"""`offload demo`: the whole pipeline on sample data, through a real worker and inline."""

from __future__ import annotations

from click.testing import CliRunner

from offload.cli import cli
from offload.demo import JOB_ORDER
from offload.settings import Settings
from tests.support.domain_data import open_store
from tests.support.procs import Workers, env_for


def test_demo_runs_every_job_on_a_worker_and_prints_the_ledger(settings: Settings, workers: Workers) -> None:
    workers.start(processes=1, threads=2)
    env = env_for(settings)
    first = CliRunner().invoke(cli, ["demo", "--timeout-s", "60"], env=env)
    assert first.exit_code == 0, first.output + workers.logs()
    assert "client 'demo-acme': created" in first.output
    assert (
        "15 webhook events through the intake and the drain: {'duplicate': 1, 'processed': 14}"
        in first.output
    )
    for job in JOB_ORDER:
        assert f"{job:30} succeeded  queue" in first.output

    store = open_store(settings.database_url)
    statuses = sorted(lead["status"] for lead in store.rows("leads"))
    assert statuses.count("meeting_booked") == 1 and "bounced" in statuses and "unsubscribed" in statuses
    assert len(store.rows("sent_emails")) == 2
    store.engine.dispose()

    again = CliRunner().invoke(cli, ["demo", "--timeout-s", "60"], env=env)
    assert again.exit_code == 0, again.output
    assert "already there" in again.output


def test_demo_inline_needs_no_worker(settings: Settings) -> None:
    result = CliRunner().invoke(cli, ["demo", "--inline"], env=env_for(settings))
    assert result.exit_code == 0, result.output
    assert all(f"{job:30} succeeded  inline" in result.output for job in JOB_ORDER)
