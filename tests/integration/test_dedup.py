"""Dedup by dispatch key: at most one run per key, whoever triggers it and however often."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from conftest import Workers, wait_for
from sqlalchemy import text

from offload.wiring import Runtime


def effects(runtime: Runtime, key: str) -> int:
    with runtime.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM test_effects WHERE dispatch_key = :k"), {"k": key}
            ).scalar()
        )


def test_twenty_concurrent_dispatches_in_one_slot_run_once(runtime: Runtime, workers: Workers) -> None:
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(
            pool.map(lambda _: runtime.dispatcher.dispatch("test-record", trigger="http"), range(20))
        )
    keys = {a.dispatch_key for a in answers}
    assert len(keys) == 1
    assert sorted(a.duplicate for a in answers) == [False] + [True] * 19
    key = keys.pop()
    workers.start(threads=4)
    wait_for(lambda: (r := runtime.ledger.get(key)) and r.status == "succeeded", what="the run to succeed")
    run = runtime.ledger.get(key)
    assert run is not None and run.attempt == 1 and run.duplicates == 19
    assert effects(runtime, key) == 1
