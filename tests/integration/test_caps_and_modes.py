"""Concurrency caps across processes, and inline mode through the same guards as queue mode."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest

from actors import attempt
from offload.wiring import Runtime
from store.ledger import NewRun, Worker
from tests.support.procs import Workers, effects, wait_for


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    edges = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda e: (e[0], e[1]),
    )
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def test_cap_of_two_holds_across_three_worker_processes(runtime: Runtime, workers: Workers) -> None:
    dispatches = [
        runtime.dispatcher.dispatch("test-capped", trigger="cli", params={"i": i, "sleep_s": 0.3})
        for i in range(30)
    ]
    workers.start(processes=3, threads=4)
    keys = {d.dispatch_key for d in dispatches}
    wait_for(
        lambda: (
            all(r.status == "succeeded" for r in runtime.ledger.runs(job="test-capped", limit=100))
            and len(runtime.ledger.runs(job="test-capped", limit=100)) == 30
        ),
        timeout_s=120,
        what="all 30 capped runs",
    )
    runs = [r for r in runtime.ledger.runs(job="test-capped", limit=100) if r.dispatch_key in keys]
    intervals = [(r.started_at, r.finished_at) for r in runs if r.started_at and r.finished_at]
    assert len(intervals) == 30
    assert max_overlap(intervals) == 2, "the cap is 2 and 12 threads were eager"
    assert all(r.attempt == 1 for r in runs), "waiting for a slot must not consume a retry"
    assert sum(r.deferrals for r in runs) > 0, "with 12 threads some messages must have waited"
    assert all(effects(runtime, k) == 1 for k in keys)
    assert runtime.leases.held("test-capped") == 0


def _shape(runtime: Runtime, key: str) -> dict[str, object]:
    run = runtime.ledger.get(key)
    assert run is not None
    return {
        "status": run.status,
        "attempt": run.attempt,
        "duplicates": run.duplicates,
        "result": run.result,
        "error_type": run.error_type,
        "events": [e.status for e in runtime.ledger.events(key)],
        "effects": effects(runtime, key),
        "timed": run.started_at is not None and run.finished_at is not None,
        "worker": run.worker_host is not None and run.worker_pid is not None,
    }


def test_inline_and_queue_modes_give_the_same_ledger_shape_and_result(
    runtime: Runtime, workers: Workers
) -> None:
    queued = runtime.dispatcher.dispatch("test-record", trigger="cli", params={"mode": "q"}, inline=False)
    inline = runtime.dispatcher.dispatch("test-record", trigger="cli", params={"mode": "i"}, inline=True)
    assert (queued.mode, queued.status, inline.mode, inline.status) == (
        "queue",
        "queued",
        "inline",
        "succeeded",
    )
    assert inline.result == {"recorded": 1}
    workers.start(threads=2)
    wait_for(lambda: runtime.ledger.get(queued.dispatch_key).status == "succeeded", what="queue run")  # type: ignore[union-attr]
    assert _shape(runtime, queued.dispatch_key) == _shape(runtime, inline.dispatch_key)
    assert runtime.ledger.get(inline.dispatch_key).mode == "inline"  # type: ignore[union-attr]


def test_inline_failure_is_recorded_failed_with_the_error(runtime: Runtime) -> None:
    d = runtime.dispatcher.dispatch("test-explode", trigger="cli", inline=True)
    run = runtime.ledger.get(d.dispatch_key)
    assert run is not None and (run.status, run.error_type) == ("failed", "RuntimeError")
    assert "boom" in (run.error_message or "")
    assert runtime.leases.held("test-explode") == 0


def _inline(runtime: Runtime, job: str, time_limit_ms: int, **params: object) -> tuple[NewRun, object]:
    """Run `job` inline under a time limit of its own, straight through the runner."""
    spec = replace(runtime.registry[job], time_limit_ms=time_limit_ms)
    key = f"{job}:limit:{params}"
    new = NewRun(job, key, key, "c", "cli", "inline", None, params)
    runtime.ledger.record_dispatch(new)
    return new, runtime.runner.run_inline(spec, new)


def test_an_inline_run_is_stopped_at_its_time_limit_before_its_lease_ends(runtime: Runtime) -> None:
    """A worker's TimeLimit stops a run before its lease expires; inline, nothing did, so a run
    could outlive its lease and another trigger take it over while it still ran."""
    started = time.monotonic()
    new, _ = _inline(runtime, "test-crashable", 300, sleep_s=20)
    assert time.monotonic() - started < 5
    run = runtime.ledger.get(new.dispatch_key)
    assert run is not None and (run.status, run.error_type) == ("failed", "TimeLimitExceeded")
    assert effects(runtime, new.dispatch_key) == 0
    assert runtime.leases.held("test-crashable") == 0


def test_an_inline_run_within_its_time_limit_is_not_interrupted_later(runtime: Runtime) -> None:
    new, outcome = _inline(runtime, "test-crashable", 300, sleep_s=0.1)
    assert outcome.run.status == "succeeded"  # type: ignore[attr-defined]
    time.sleep(0.6)  # past the limit: a stray interrupt would land here and fail the test
    assert effects(runtime, new.dispatch_key) == 1


def test_an_inline_runs_time_limit_ends_with_its_body_not_in_its_success_mark(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit bounds the job's body. An interrupt landing in the mark failed a run whose body
    finished in time, or, once the mark had committed, left the caller with no result."""
    complete_in = runtime.ledger.complete_in

    def slow_mark(*args: Any, **kwargs: Any) -> None:
        complete_in(*args, **kwargs)
        time.sleep(0.6)  # past the limit, before the job's transaction commits

    monkeypatch.setattr(runtime.ledger, "complete_in", slow_mark)
    new, outcome = _inline(runtime, "test-crashable", 300, sleep_s=0)
    assert outcome.run.status == "succeeded" and outcome.result is not None  # type: ignore[attr-defined]
    assert effects(runtime, new.dispatch_key) == 1


def test_an_error_text_no_store_takes_is_recorded(runtime: Runtime) -> None:
    """An error quoting a provider's binary answer must still be recorded: PostgreSQL refuses NUL in
    text, and neither driver encodes the lone surrogate that `surrogateescape` leaves of a bad byte."""
    error = "HTTP 502: \x00\x01binary\x00 page " + b"caf\xe9".decode("utf-8", "surrogateescape")
    d = runtime.dispatcher.dispatch("test-explode", trigger="cli", params={"error": error}, inline=True)
    run = runtime.ledger.get(d.dispatch_key)
    assert run is not None and (run.status, run.error_type) == ("failed", "RuntimeError")
    assert run.error_message == "HTTP 502: \ufffd\x01binary\ufffd page caf\ufffd"
    assert [e.detail for e in runtime.ledger.events(d.dispatch_key)][
        -1
    ] == f"RuntimeError: {run.error_message}"
    assert runtime.leases.held("test-explode") == 0


def test_a_message_skipped_after_its_guards_committed_still_frees_its_slot(runtime: Runtime) -> None:
    new = NewRun("test-capped", "k", "k", "c", "cli", "queue", None, {})
    runtime.ledger.record_dispatch(new)
    claim = runtime.ledger.claim(new, cap=2, lease_s=60, worker=Worker("here", 1), max_attempts=3)
    assert claim.outcome == "claimed" and runtime.leases.held("test-capped") == 1
    started = attempt.Attempt(key="k", job="test-capped", token=claim.token, holds_slot=True)
    message = SimpleNamespace(args=("k", {}), options={}, actor_name="any", _offload_attempt=started)
    names = [type(m).__name__ for m in runtime.broker.middleware]
    guards = runtime.broker.middleware[names.index("Dedup") : names.index("StatusLedger") + 1]
    assert [type(m).__name__ for m in guards] == ["Dedup", "ConcurrencyCap", "StatusLedger"]
    for middleware in reversed(guards):  # after-hooks run in reverse, as dramatiq runs them
        middleware.after_skip_message(runtime.broker, message)
    assert runtime.leases.held("test-capped") == 0
