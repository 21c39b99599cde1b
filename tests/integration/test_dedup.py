"""Dedup by dispatch key: at most one run per key, whoever triggers it and however often."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from offload.settings import Settings
from offload.wiring import Runtime
from tests.support.procs import ROOT, Workers, clear_of_minute_boundary, effects, env_for, wait_for


def cli_dispatch(settings: Settings, job: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "offload.cli", "dispatch", job],
        cwd=ROOT,
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(out.stdout)["dispatch"])


def test_twenty_concurrent_dispatches_from_threads_and_cli_run_once(
    runtime: Runtime, settings: Settings, workers: Workers
) -> None:
    clear_of_minute_boundary()
    with ThreadPoolExecutor(max_workers=12) as pool:
        from_cli = [pool.submit(cli_dispatch, settings, "background-jobs") for _ in range(4)]
        from_threads = list(
            pool.map(lambda _: runtime.dispatcher.dispatch("background-jobs", trigger="http"), range(16))
        )
        cli_answers = [f.result() for f in from_cli]
    keys = {a.dispatch_key for a in from_threads} | {str(a["dispatchKey"]) for a in cli_answers}
    assert len(keys) == 1, "one slot, one key"
    verdicts = [a.duplicate for a in from_threads] + [bool(a["duplicate"]) for a in cli_answers]
    assert sorted(verdicts) == [False] + [True] * 19
    key = keys.pop()
    workers.start(threads=4)
    wait_for(lambda: (r := runtime.ledger.get(key)) and r.status == "succeeded", what="the run to succeed")
    run = runtime.ledger.get(key)
    assert run is not None and run.attempt == 1 and run.duplicates == 19
    assert [e.status for e in runtime.ledger.events(key)] == ["queued", "running", "succeeded"]


def test_two_copies_of_one_message_in_flight_run_once(runtime: Runtime, workers: Workers) -> None:
    d = runtime.dispatcher.dispatch("test-record", trigger="cli", params={"sleep_s": 1.0})
    run = runtime.ledger.get(d.dispatch_key)
    assert run is not None
    runtime.dispatcher.publish(run)  # a second copy, as after a reconnect or a double publish
    workers.start(threads=4)
    wait_for(lambda: (r := runtime.ledger.get(d.dispatch_key)) and r.status == "succeeded", what="success")
    wait_for(lambda: runtime.ledger.get(d.dispatch_key).duplicates >= 1, what="the copy to be skipped")
    assert effects(runtime, d.dispatch_key) == 1
    assert runtime.ledger.get(d.dispatch_key).attempt == 1  # type: ignore[union-attr]


def test_failed_run_releases_its_key_for_a_new_trigger(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    runtime.dispatcher.clock = lambda: now  # one slot for every trigger below, whatever the minute
    first = runtime.dispatcher.dispatch("test-explode", trigger="cli", inline=True)
    assert first.status == "failed"
    again = runtime.dispatcher.dispatch("test-explode", trigger="cli", inline=True)
    assert again.dispatch_key == first.dispatch_key and not again.duplicate
    assert runtime.ledger.get(first.dispatch_key).attempt == 2  # type: ignore[union-attr]
    ok = runtime.dispatcher.dispatch("test-record", trigger="cli", inline=True)
    assert ok.status == "succeeded"
    dup = runtime.dispatcher.dispatch("test-record", trigger="cli", inline=True)
    assert dup.duplicate and dup.status == "succeeded" and effects(runtime, ok.dispatch_key) == 1
