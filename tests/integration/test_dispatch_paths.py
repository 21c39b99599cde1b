"""The dispatch API end to end: publish failures, the real `offload worker`, replay lineage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from actors.dispatch import PublishFailed
from domain.runs import RunStatus
from offload.settings import Settings
from offload.wiring import Runtime, build
from store.errors import StoreUnavailable
from store.ledger import Worker
from store.models import BackgroundJobRow
from store.webhook_events import NewWebhookEvent
from tests.support.jobs import TEST_PORTS, TEST_REGISTRY
from tests.support.procs import ROOT, env_for, wait_for
from tests.support.proxy import Proxy


def test_publish_failure_is_an_error_records_failed_and_runs_nothing(settings: Settings) -> None:
    proxy = Proxy("127.0.0.1", 5672)
    broker_url = settings.broker_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    rt = build(
        settings.model_copy(update={"broker_url": broker_url}), registry=TEST_REGISTRY, ports=TEST_PORTS
    )
    now = datetime.now(UTC)
    rt.dispatcher.clock = lambda: now  # the retry below must fall into the same slot
    try:
        proxy.cut()
        with pytest.raises(PublishFailed, match="RabbitMQ at amqp://guest:\\*\\*\\*@"):
            rt.dispatcher.dispatch("test-record", trigger="http")
        run = rt.ledger.runs(job="test-record")[0]
        assert run.status == "failed" and run.attempt == 0
        assert "enqueue failed" in (rt.ledger.events(run.dispatch_key)[-1].detail or "")
        proxy.restore()
        again = rt.dispatcher.dispatch("test-record", trigger="http")  # the failed run's key is free again
        assert (again.dispatch_key, again.duplicate, again.status) == (run.dispatch_key, False, "queued")
    finally:
        rt.close()
        proxy.close()


def test_an_inline_run_whose_claim_failed_is_failed_so_the_next_trigger_runs_it(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No message carries an inline run: left `queued`, every later trigger of its slot was answered
    `duplicate: true, status: queued`, and the job never ran."""
    claim = runtime.ledger.claim
    calls = iter([StoreUnavailable("connection lost")])

    def blip(*args: Any, **kwargs: Any) -> Any:
        for error in calls:
            raise error
        return claim(*args, **kwargs)

    monkeypatch.setattr(runtime.ledger, "claim", blip)
    with pytest.raises(StoreUnavailable):
        runtime.dispatcher.dispatch("test-record", trigger="cli", inline=True)
    (run,) = runtime.ledger.runs(job="test-record")
    assert run.status == "failed" and run.attempt == 0
    again = runtime.dispatcher.dispatch("test-record", trigger="cli", inline=True)
    assert (again.dispatch_key, again.duplicate, again.status) == (run.dispatch_key, False, "succeeded")


def test_offload_worker_cli_processes_a_background_jobs_dispatch(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    with runtime.uow() as uow:
        row_id = uow.background_jobs.add(type="noop", payload={}, run_at=datetime.now(UTC))
        uow.commit()
    env = env_for(settings)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload.cli", "worker", "--processes", "1", "--threads", "2"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out = subprocess.run(
            [sys.executable, "-m", "offload.cli", "dispatch", "background-jobs"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        key = json.loads(out.stdout)["dispatch"]["dispatchKey"]
        wait_for(lambda: runtime.ledger.get(key).status == "succeeded", timeout_s=60, what="the run")  # type: ignore[union-attr]
        run = runtime.ledger.get(key)
        assert run is not None and run.result == {
            "claimed": 1,
            "done": 1,
            "retried": 0,
            "failed": 0,
            "taken_over": 0,
            "has_more": False,
        }
        with runtime.sessions() as s:
            assert (
                s.scalars(select(BackgroundJobRow.status).where(BackgroundJobRow.id == row_id)).one()
                == "done"
            )
    finally:
        os.kill(worker.pid, signal.SIGTERM)  # the dramatiq master passes it on to its workers
        assert worker.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()[-3000:]


def test_replay_of_a_failed_run_dispatches_a_new_run_with_lineage(runtime: Runtime) -> None:
    failed = runtime.dispatcher.dispatch("test-explode", trigger="cli", inline=True)
    assert failed.status == "failed"
    replay = runtime.dispatcher.replay(failed.dispatch_key)
    assert replay.dispatch_key == f"{failed.dispatch_key}~replay1" and replay.status == "queued"
    run = runtime.ledger.get(replay.dispatch_key)
    assert run is not None and run.replay_of == failed.run_id and run.trigger == "replay"
    assert run.correlation_id == failed.correlation_id
    again = runtime.dispatcher.replay(failed.dispatch_key)  # while the replay is queued: the same one
    assert (again.dispatch_key, again.duplicate) == (replay.dispatch_key, True)
    runtime.ledger.finish(replay.dispatch_key, RunStatus.DEAD, token=None, detail="poison")
    assert runtime.dispatcher.replay(failed.dispatch_key).dispatch_key == f"{failed.dispatch_key}~replay2"
    with pytest.raises(ValueError, match="only"):
        runtime.dispatcher.replay(
            runtime.dispatcher.dispatch("test-record", trigger="cli", inline=True).dispatch_key
        )
    lost = runtime.dispatcher.prepare("test-record", trigger="cli", params={"lost": 1})
    runtime.ledger.record_dispatch(lost)
    runtime.ledger.finish(lost.dispatch_key, RunStatus.LOST, token=None, detail="lease expired")
    with pytest.raises(ValueError, match="is lost"):  # its message is redelivered and takes it over
        runtime.dispatcher.replay(lost.dispatch_key)


def test_status_joins_queue_depths_with_slots_held_and_the_ledger(
    runtime: Runtime, settings: Settings
) -> None:
    runtime.dispatcher.dispatch("background-jobs", trigger="cli")
    held = runtime.dispatcher.prepare("background-jobs", trigger="cli", params={"held": 1})
    runtime.ledger.record_dispatch(held)
    claim = runtime.ledger.claim(held, cap=1, lease_s=60, worker=Worker("here", 1), max_attempts=3)
    assert claim.outcome == "claimed"
    with runtime.uow() as uow:  # an event its handler refused: its drain run succeeded
        uow.webhook_events.add(
            NewWebhookEvent(
                provider="email",
                provider_event_id="e1",
                event_type="EMAIL_SENT",
                lead_ref=None,
                headers={},
                body="{}",
                status="failed",
                status_reason="PermanentError: unknown workspace 'ws1'",
                received_at=datetime.now(UTC),
                queued_at=None,
            )
        )
        uow.commit()

    def status() -> str:
        return subprocess.run(
            [sys.executable, "-m", "offload.cli", "status"],
            cwd=ROOT,
            env=env_for(settings),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    def line() -> str:
        return next(row for row in status().splitlines() if row.startswith("background-jobs"))

    # The management API refreshes queue statistics every few seconds.
    row = wait_for(lambda: (r := line()).split()[1] == "1" and r, timeout_s=30, every_s=1, what="queue stats")
    assert row.split()[6:] == ["1/1", "queued=1", "running=1"]
    assert status().splitlines()[-1] == "webhook events: failed=1"


def test_status_says_which_of_the_management_credentials_or_the_vhost_is_wrong(settings: Settings) -> None:
    wrong_password = settings.management_url.replace("guest:guest@", "guest:wrong@", 1)
    no_vhost = settings.broker_url.rsplit("/", 1)[0] + "/no-such-vhost"
    for change, fragment in (
        ({"OFFLOAD_MANAGEMENT_URL": wrong_password}, "refused the user and password"),
        ({"OFFLOAD_BROKER_URL": no_vhost}, "RabbitMQ has no vhost 'no-such-vhost'"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "offload.cli", "status"],
            cwd=ROOT,
            env=env_for(settings) | change,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 3 and result.stderr.startswith("offload: "), result.stderr
        assert fragment in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_job_without_a_schedule_dedups_within_a_minute_and_runs_again_the_next(runtime: Runtime) -> None:
    minute = datetime(2026, 3, 1, 9, 5, tzinfo=UTC)
    runtime.dispatcher.clock = lambda: minute + timedelta(seconds=10)
    first = runtime.dispatcher.dispatch("test-record", trigger="http")
    runtime.dispatcher.clock = lambda: minute + timedelta(seconds=50)
    retried = runtime.dispatcher.dispatch("test-record", trigger="http")
    runtime.dispatcher.clock = lambda: minute + timedelta(seconds=70)
    later = runtime.dispatcher.dispatch("test-record", trigger="http")
    assert retried.duplicate and retried.dispatch_key == first.dispatch_key
    assert not later.duplicate and later.dispatch_key != first.dispatch_key
    assert first.dispatch_key.startswith("test-record:2026-03-01T09:05Z:")


def test_export_lists_runs_with_history_and_verify_flags_expired_leases(
    runtime: Runtime, settings: Settings
) -> None:
    from store.ledger import NewRun, SqlLedger, Worker

    ok = runtime.dispatcher.dispatch("test-record", trigger="cli", inline=True)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "offload.cli", *args],
            cwd=ROOT,
            env=env_for(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )

    header, row = cli("runs").stdout.splitlines()
    assert header.startswith("queued (UTC)        status    job ")
    assert row.split()[2:4] == ["succeeded", "test-record"] and row.endswith(ok.dispatch_key)
    assert cli("runs", "--job", "background-jobs").stdout == "no runs\n"

    lines = [json.loads(line) for line in cli("export").stdout.splitlines()]
    assert [(r["dispatch_key"], [e["status"] for e in r["events"]]) for r in lines] == [
        (ok.dispatch_key, ["queued", "running", "succeeded"])
    ]
    queued_at = lines[0]["queued_at"]  # as export prints it, with its offset, is what --since takes
    assert [
        json.loads(line)["dispatch_key"] for line in cli("export", "--since", queued_at).stdout.splitlines()
    ] == [ok.dispatch_key]
    later = (datetime.fromisoformat(queued_at) + timedelta(seconds=1)).astimezone(
        timezone(timedelta(hours=2))
    )
    assert cli("export", "--since", later.isoformat()).stdout == ""
    assert cli("verify").returncode == 0

    an_hour_ago = SqlLedger(runtime.engine, clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    dead_worker = NewRun(
        job="test-record",
        dispatch_key="orphaned",
        message_id="m",
        correlation_id="c",
        trigger="cli",
        mode="queue",
        slot=None,
        params={},
    )
    an_hour_ago.record_dispatch(dead_worker)
    an_hour_ago.claim(dead_worker, cap=1, lease_s=60, worker=Worker("gone", 1), max_attempts=3)
    checked = cli("verify")
    assert checked.returncode == 1
    assert "PROBLEM 1 running run(s) hold an expired lease (worker died): `offload reap`" in checked.stdout
    # Without the management API, what the ledger shows by itself is still said, then exit 3.
    wrong_password = settings.management_url.replace("guest:guest@", "guest:wrong@", 1)
    blind = subprocess.run(
        [sys.executable, "-m", "offload.cli", "verify"],
        cwd=ROOT,
        env=env_for(settings) | {"OFFLOAD_MANAGEMENT_URL": wrong_password},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert blind.returncode == 3 and "refused the user and password" in blind.stderr
    assert "PROBLEM 1 running run(s) hold an expired lease" in blind.stdout
