"""SQLite: the process's one writer (store/db.py `_Writer`) against a time limit.

dramatiq's TimeLimit (and the inline one) interrupts a job's thread with an asynchronous exception,
which Python delivers when the thread next runs bytecode: for a thread waiting for the writer, as
soon as it is granted; for a thread in a statement, as the statement returns, and SQLAlchemy then
drops the connection without a rollback, its cursor still holding SQLite's lock. Either way the
process's later writes (claims, completions, verdicts) failed: for good, or until the garbage
collector came by.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import pytest
from dramatiq.middleware.time_limit import TimeLimitExceeded
from dramatiq.threading import raise_thread_exception
from sqlalchemy import text

from store import db
from store.errors import StoreUnavailable
from store.ledger import NewRun, SqlLedger


def test_a_time_limit_that_lands_while_waiting_for_the_writer_does_not_wedge_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 1_500)  # keep the test short
    url = f"sqlite:///{tmp_path / 'offload.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    ledger = SqlLedger(engine)

    writing, done_writing = threading.Event(), threading.Event()

    def other_writer() -> None:  # another worker thread's transaction, a few hundred ms long
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
            writing.set()
            done_writing.wait(5)

    outcome: list[BaseException] = []

    def job() -> None:  # a job's first statement begins its transaction: it waits for the lock
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT 1"))
        except BaseException as e:
            outcome.append(e)

    w = threading.Thread(target=other_writer)
    w.start()
    assert writing.wait(5)
    j = threading.Thread(target=job)
    j.start()
    time.sleep(0.2)  # the job thread waits for the writer lock
    raise_thread_exception(j.ident, TimeLimitExceeded)  # its time limit fires meanwhile
    done_writing.set()
    w.join(5)
    j.join(5)
    assert outcome and isinstance(outcome[0], TimeLimitExceeded), outcome

    # The interrupted job is gone; the process must go on writing.
    new = NewRun("test-record", "k", "k", "c", "cli", "queue", None, {})
    try:
        ledger.record_dispatch(new)
    except StoreUnavailable as e:
        raise AssertionError(f"every write of this process now fails: {e}") from e
    finally:
        engine.dispose()


#: A statement long enough for the interrupt to land in it.
SLOW = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c"
)


def test_a_time_limit_that_lands_in_a_statement_does_not_wedge_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 1_500)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'offload.db'}")
    db.upgrade(engine)
    interrupted, started = threading.Event(), threading.Event()

    def job() -> None:
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT 1"))
                started.set()
                conn.execute(text(SLOW))
        except BaseException:
            interrupted.set()

    gc.disable()  # a quiet process: nothing collects the interrupted statement's cursor for a while
    try:
        j = threading.Thread(target=job)
        j.start()
        assert started.wait(5)
        time.sleep(0.05)
        raise_thread_exception(j.ident, TimeLimitExceeded)
        j.join(30)
        assert interrupted.is_set()
        SqlLedger(engine).record_dispatch(NewRun("test-record", "k", "k", "c", "cli", "queue", None, {}))
    except StoreUnavailable as e:
        raise AssertionError(f"the process's next write failed: {e}") from e
    finally:
        gc.enable()
        engine.dispose()
