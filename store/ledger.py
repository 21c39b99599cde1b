"""SqlLedger: the status ledger and the dedup record, one row per dispatch key plus its event history."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal, cast

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain import keys
from domain.runs import CLAIMABLE, FINAL, REOPENABLE, Mode, RunStatus
from store.db import DatabaseClock, Direct, PgStatement, make_sessions, translate_errors
from store.errors import LeaseLost
from store.leases import PG_RELEASE_SLOT, PG_TAKE_SLOT, SqlLeases, holder, slot_params
from store.models import Run, RunEvent

ERROR_CHARS = 2000
_runs = cast(Table, Run.__table__)
_events = cast(Table, RunEvent.__table__)


def _p(name: str) -> Any:
    return bindparam(f"p_{name}")


def _literals(statuses: frozenset[RunStatus]) -> list[Any]:
    """Statuses rendered into the SQL: an IN list of bound values is re-expanded on every execution."""
    return [literal_column(f"'{status.value}'") for status in sorted(statuses)]


# The hot path's statements, built once: building and caching them per call cost more CPU than running them.
# INSERT ... ON CONFLICT (dispatch_key) DO NOTHING RETURNING id: a known key raises no error that
# would abort a caller's transaction. On PostgreSQL it is `_PG_RECORD`, with the history row.
_INSERT_RUN_SQLITE = (
    sqlite.insert(_runs).on_conflict_do_nothing(index_elements=["dispatch_key"]).returning(_runs.c.id)
)
_INSERT_EVENT = insert(_events)
#: The columns a fresh ledger row is written with (`_new_row`, `pg_record_after`).
_NEW_ROW_COLUMNS = (
    "job",
    "dispatch_key",
    "message_id",
    "correlation_id",
    "trigger",
    "mode",
    "status",
    "slot",
    "params",
    "attempt",
    "duplicates",
    "deferrals",
    "queued_at",
    "updated_at",
    "replay_of",
)
_CLAIM = (
    update(_runs)
    # `lost` takes the slow path, where a run that keeps killing its worker is declared dead.
    .where(_runs.c.dispatch_key == _p("key"), _runs.c.status.in_(_literals(CLAIMABLE - {RunStatus.LOST})))
    .values(
        status=RunStatus.RUNNING,
        attempt=_runs.c.attempt + 1,
        message_id=_p("message_id"),
        lease_token=_p("token"),
        lease_expires_at=_p("expires_at"),
        claimed_at=_p("now"),
        started_at=_p("now"),
        updated_at=_p("now"),
        finished_at=None,
        worker_host=_p("host"),
        worker_pid=_p("pid"),
        error_type=None,
        error_message=None,
    )
    .returning(_runs.c.attempt)
)
#: A completion's attempt must still hold the run: its lease token, `running`, or `lost` if the reaper
#: presumed it dead but no other attempt took the run over (that would have changed the token).
_COMPLETABLE = (RunStatus.RUNNING, RunStatus.LOST)
_COMPLETE = (
    update(_runs)
    .where(
        _runs.c.dispatch_key == _p("key"),
        _runs.c.lease_token == _p("token"),
        _runs.c.status.in_(_COMPLETABLE),
    )
    .values(
        status=RunStatus.SUCCEEDED,
        result=_p("result"),
        started_at=_p("started_at"),
        finished_at=_p("now"),
        updated_at=_p("now"),
        lease_token=None,
        lease_expires_at=None,
    )
    .returning(_runs.c.id)
)


#: How long a claim that found every slot held waits before it looks once more (PostgreSQL only).
_PG_RECHECK_S = 0.002
# On PostgreSQL the claim (run and slot) and the completion (mark and slot) are one statement
# each: a round trip is most of what a guarded message costs, and one statement is one atomic
# transaction, so a claim needs no BEGIN and COMMIT of its own.
_CLAIMABLE_SQL = ", ".join(f"'{s.value}'" for s in sorted(CLAIMABLE - {RunStatus.LOST}))
_PG_CLAIM = PgStatement(f"""
WITH run AS MATERIALIZED (
    SELECT id, attempt FROM background_function_runs
    WHERE dispatch_key = %(p_key)s AND status IN ({_CLAIMABLE_SQL})
    FOR UPDATE
), {PG_TAKE_SLOT}, claimed AS (
    UPDATE background_function_runs AS r SET
        status = '{RunStatus.RUNNING.value}', attempt = r.attempt + 1, message_id = %(p_message_id)s,
        lease_token = %(p_token)s, lease_expires_at = %(p_expires_at)s, claimed_at = %(p_now)s,
        started_at = %(p_now)s, updated_at = %(p_now)s, finished_at = NULL, worker_host = %(p_host)s,
        worker_pid = %(p_pid)s, error_type = NULL, error_message = NULL
    FROM run WHERE r.id = run.id AND EXISTS (SELECT FROM slot)
    RETURNING r.attempt
)
SELECT (SELECT attempt FROM run), (SELECT attempt FROM claimed)
""")
_PG_COMPLETE = PgStatement(f"""
WITH done AS (
    UPDATE background_function_runs SET
        status = '{RunStatus.SUCCEEDED.value}', result = CAST(%(p_result)s AS JSON),
        started_at = %(p_started_at)s, finished_at = %(p_now)s, updated_at = %(p_now)s,
        lease_token = NULL, lease_expires_at = NULL
    WHERE dispatch_key = %(p_key)s AND lease_token = %(p_token)s
      AND status IN ({", ".join(f"'{s.value}'" for s in _COMPLETABLE)})
    RETURNING id
), {PG_RELEASE_SLOT}
SELECT count(*) FROM done
""")


def pg_record_after(source: str) -> str:
    """The PostgreSQL CTEs `run` and `history`: a new run and its history row for each row of `source`.

    For a caller that inserts its own row (the CTE `source`) and the run it starts in one statement;
    the run's values are `record_params`. A key already on the ledger inserts nothing.
    """
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    values = ", ".join(
        f"CAST(%(v_{name})s AS {_runs.c[name].type.compile(dialect=dialect)})" for name in _NEW_ROW_COLUMNS
    )
    return f"""run AS (
    INSERT INTO background_function_runs ({", ".join(_NEW_ROW_COLUMNS)})
    SELECT {values} FROM {source}
    ON CONFLICT (dispatch_key) DO NOTHING
    RETURNING id, status, attempt
), history AS (
    INSERT INTO background_function_run_events (run_id, at, status, attempt)
    SELECT id, %(v_updated_at)s, status, attempt FROM run
)"""


#: A new run and its first history row, in one statement.
_PG_RECORD = f"WITH one AS (SELECT), {pg_record_after('one')} SELECT (SELECT id FROM run)"


def record_params(new: NewRun, now: datetime) -> dict[str, Any]:
    """The parameters of `pg_record_after` for `new`, recorded at `now`."""
    values = _new_row(new, now)
    values["params"] = json.dumps(values["params"])
    return {f"v_{name}": value for name, value in values.items()}


def recorded(new: NewRun, now: datetime, run_id: int) -> RunView:
    """The run `pg_record_after` inserted as `run_id`."""
    return RunView(**{**_UNSET, **_new_row(new, now), "id": run_id})


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Worker:
    host: str
    pid: int


@dataclass(frozen=True)
class NewRun:
    job: str
    dispatch_key: str
    message_id: str
    correlation_id: str
    trigger: str
    mode: str
    slot: datetime | None
    params: Mapping[str, Any]
    replay_of: int | None = None


@dataclass(frozen=True)
class RunView:
    """A read-only snapshot of a ledger row."""

    id: int
    job: str
    dispatch_key: str
    message_id: str
    correlation_id: str
    trigger: str
    mode: str
    status: str
    slot: datetime | None
    params: dict[str, Any]
    attempt: int
    duplicates: int
    deferrals: int
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    lease_expires_at: datetime | None
    worker_host: str | None
    worker_pid: int | None
    error_type: str | None
    error_message: str | None
    result: dict[str, Any] | None
    replay_of: int | None

    @classmethod
    def of(cls, row: Run | Row[Any]) -> RunView:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})

    def asdict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out


#: The fields of a run that a fresh ledger row leaves empty.
_UNSET: dict[str, Any] = {f.name: None for f in fields(RunView)}


@dataclass(frozen=True)
class EventView:
    at: datetime
    status: str
    attempt: int
    worker_host: str | None
    worker_pid: int | None
    detail: str | None


@dataclass(frozen=True)
class Claim:
    """The verdict of a claim: attempt number `attempt` runs under `token`, or `run` says why not.

    `capped`: the run could start but every slot of its job is held; nothing was written, and
    `attempt` is the run's attempts so far, which fences a verdict written about it later.
    """

    outcome: Literal["claimed", "capped", "duplicate", "busy", "exhausted"]
    attempt: int
    token: str | None = None
    run: RunView | None = None  # the row as it stands, when the claim was refused


class SqlLedger:
    """Writes every state change of a run; the unique dispatch key makes it the dedup record too.

    The hot path (first dispatch, claim, completion) is a few Core statements; the rare paths
    (duplicates, takeovers, failures) lock the row through the ORM.

    Parameters:
      engine: the store's engine.
      clock: returns the current UTC time (tests pass a fake); by default the database server's.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._sessions = make_sessions(engine)
        self._pg = engine.dialect.name == "postgresql"
        # Leases are judged across hosts: by the server's clock (SQLite's server is this host).
        clock = clock or (DatabaseClock(engine) if self._pg else utcnow)
        self._clock = clock
        #: The hot statements' executor on PostgreSQL (the webhook intake's too).
        self.direct = Direct(engine) if self._pg else None
        self.leases = SqlLeases(engine, clock=clock)

    # -- dispatch side -------------------------------------------------------------------------

    def record_dispatch(self, new: NewRun, *, conn: Connection | None = None) -> tuple[RunView, bool]:
        """Insert the run as `queued`, or reopen a failed one; returns (run, duplicate).

        In `conn`'s transaction when given (the caller commits), else in its own.
        """
        with translate_errors():
            if conn is not None:
                return self._record_dispatch(conn, new)
            with self._engine.begin() as own:
                return self._record_dispatch(own, new)

    def _record_dispatch(self, conn: Connection, new: NewRun) -> tuple[RunView, bool]:
        now = self._clock()
        values = _new_row(new, now)
        if self._pg:
            run_id = conn.exec_driver_sql(_PG_RECORD, record_params(new, now)).scalar_one()
        else:
            run_id = conn.execute(_INSERT_RUN_SQLITE, values).scalar_one_or_none()
        if run_id is not None:  # the common case: a key never seen
            run = recorded(new, now, run_id)
            if not self._pg:
                conn.execute(_INSERT_EVENT, _event_row(run, now))
            return run, False
        with Session(bind=conn, expire_on_commit=False) as s:  # joins conn's transaction
            row = _lock(s, new.dispatch_key)
            if row.status in REOPENABLE or (row.status == RunStatus.LOST and row.mode == "inline"):
                row.status = RunStatus.QUEUED
                row.correlation_id, row.trigger, row.mode = new.correlation_id, new.trigger, new.mode
                row.queued_at = row.updated_at = now
                row.finished_at = None
                _event(s, row, now, detail=f"reopened by {new.trigger}")
                duplicate = False
            else:
                row.duplicates += 1
                duplicate = True
            s.flush()
            return RunView.of(row), duplicate

    # -- worker side ---------------------------------------------------------------------------

    def claim(self, new: NewRun, *, cap: int, lease_s: float, worker: Worker, max_attempts: int) -> Claim:
        """Take the run and one of its job's `cap` slots for one attempt, committed before returning.

        At most one holder at a time, never after success. A `running` row whose lease expired was
        held by a worker that died: it is recorded `lost` and taken over, with the slot the dead
        attempt held. A run that reached `max_attempts` this way is declared `dead`. When every slot
        is held by other runs the answer is `capped` and nothing is written: the wait is no attempt.
        """
        now = self._clock()
        token = uuid.uuid4().hex
        slot = slot_params(new.job, cap=cap, key=new.dispatch_key, token=token, now=now, lease_s=lease_s)
        params = {
            **slot,
            "p_key": new.dispatch_key,
            "p_message_id": new.message_id,
            "p_token": token,
            "p_host": worker.host,
            "p_pid": worker.pid,
        }
        with translate_errors():
            self.leases.ensure(new.job, cap)
            if self.direct is not None:  # the common case in one statement; the rest below
                seen, attempt = self.direct.run(_PG_CLAIM, params)
                if seen is not None and attempt is None:
                    # SKIP LOCKED passes over a slot whose release is still committing: look again.
                    time.sleep(_PG_RECHECK_S)
                    seen, attempt = self.direct.run(_PG_CLAIM, params)
                if attempt is not None:
                    return Claim("claimed", attempt, token)
                if seen is not None:
                    return Claim("capped", seen)
            with self._engine.connect() as conn, conn.begin() as tx:
                claim = self._claim(conn, new, params, max_attempts=max_attempts, try_update=not self._pg)
                if claim.outcome == "claimed" and not self.leases.acquire(conn, slot):
                    tx.rollback()
                    return Claim("capped", claim.attempt - 1)
                return claim

    def _claim(
        self, conn: Connection, new: NewRun, params: dict[str, Any], *, max_attempts: int, try_update: bool
    ) -> Claim:
        now, token, expires_at = params["p_now"], params["p_token"], params["p_expires_at"]
        if try_update:  # the common case: one conditional update
            row = conn.execute(_CLAIM, params).one_or_none()
            if row is not None:
                return Claim("claimed", row.attempt, token)
        with Session(bind=conn, expire_on_commit=False) as s:  # joins conn's transaction
            orm_row = _lock(s, new.dispatch_key, missing=new, now=now)
            if orm_row.status == RunStatus.RUNNING:
                assert orm_row.lease_expires_at is not None
                if orm_row.lease_expires_at > now:
                    return Claim("busy", orm_row.attempt, run=RunView.of(orm_row))
                _record_claim(s, orm_row)
                orm_row.status = RunStatus.LOST
                _event(s, orm_row, now, detail="lease expired; holder presumed dead")
            if orm_row.status == RunStatus.LOST and orm_row.attempt >= max_attempts:
                _set(orm_row, RunStatus.DEAD, now, error=("AttemptsExhausted", f"{orm_row.attempt} attempts"))
                _event(s, orm_row, now, detail="attempts exhausted")
                s.flush()
                return Claim("exhausted", orm_row.attempt, run=RunView.of(orm_row))
            if orm_row.status not in CLAIMABLE:
                orm_row.duplicates += 1
                s.flush()
                return Claim("duplicate", orm_row.attempt, run=RunView.of(orm_row))
            orm_row.attempt += 1
            orm_row.status = RunStatus.RUNNING
            orm_row.message_id = new.message_id
            orm_row.lease_token, orm_row.lease_expires_at = token, expires_at
            orm_row.claimed_at = orm_row.started_at = orm_row.updated_at = now
            orm_row.finished_at = None
            orm_row.worker_host, orm_row.worker_pid = params["p_host"], params["p_pid"]
            orm_row.error_type = orm_row.error_message = None
            s.flush()
            return Claim("claimed", orm_row.attempt, token)

    def finish(
        self,
        key: str,
        status: RunStatus,
        *,
        token: str | None,
        attempt: int | None = None,
        error: BaseException | None = None,
        result: Mapping[str, Any] | None = None,
        detail: str | None = None,
    ) -> RunView | None:
        """Move a run to `status`.

        With a token, only while that attempt still holds the lease; without one, a verdict about
        a message that holds nothing: see `_unheld`.
        """
        now = self._clock()
        with translate_errors(), self._sessions() as s:
            row = _lock(s, key)
            if row.lease_token != token if token is not None else not _unheld(row, attempt, final=True):
                return None
            err = (type(error).__name__, str(error)) if error is not None else None
            _record_claim(s, row)
            _set(row, status, now, error=err, result=result)
            _event(s, row, now, detail=detail or (f"{err[0]}: {err[1]}" if err else None))
            s.commit()
            return RunView.of(row)

    def defer(self, key: str, *, detail: str, attempt: int | None = None) -> RunView | None:
        """Record that a message is waiting for a free slot, if the run is as `_unheld` says."""
        now = self._clock()
        with translate_errors(), self._sessions() as s:
            row = s.scalars(select(Run).where(Run.dispatch_key == key).with_for_update()).one_or_none()
            if row is None or not _unheld(row, attempt, final=False):
                return None
            row.deferrals += 1
            if row.status != RunStatus.DEFERRED:
                row.status = RunStatus.DEFERRED
                _event(s, row, now, detail=detail)
            row.updated_at = now
            s.commit()
            return RunView.of(row)

    def now(self) -> datetime:
        """The ledger's clock, for timestamps taken outside it (when a job's body started)."""
        return self._clock()

    def complete_in(
        self,
        session: Session | None,
        key: str,
        token: str,
        result: Mapping[str, Any],
        *,
        job: str,
        started_at: datetime,
    ) -> None:
        """Mark the attempt succeeded and free its slot in `session`'s transaction, with the job's effects.

        `started_at` is when the job's body began (after its slot was taken), so the run's timings
        show the job itself; the claim's time stays in the run's history. Without a session (the
        job read and wrote nothing) the mark commits alone.
        Raises LeaseLost when another attempt took the run over: the caller must roll back.
        """
        now = self._clock()
        params = {
            "p_key": key,
            "p_token": token,
            "p_result": dict(result),
            "p_now": now,
            "p_started_at": started_at,
            "p_job": job,
            "p_holder": holder(key, token),
        }
        with translate_errors():
            if self.direct is not None:
                params["p_result"] = json.dumps(params["p_result"])
                if session is None:
                    (done,) = self.direct.run(_PG_COMPLETE, params)
                else:
                    done = session.connection().exec_driver_sql(_PG_COMPLETE.sql, params).scalar_one()
            elif session is None:
                with self._engine.connect() as conn, conn.begin():
                    done = self._complete(conn, params)
            else:
                done = self._complete(session.connection(), params)
            if not done:
                raise LeaseLost(key)

    def _complete(self, conn: Connection, params: dict[str, Any]) -> bool:
        row = conn.execute(_COMPLETE, params).one_or_none()
        if row is None:
            return False
        self.leases.release(params["p_job"], key=params["p_key"], token=params["p_token"], conn=conn)
        return True

    def reap(self, *, limit: int = 500) -> int:
        """Mark `running` rows whose lease expired as `lost`; their messages are redelivered by RabbitMQ.

        An attempt that only overran its lease keeps its token and may still succeed, unless a
        redelivery took the run over first. An inline run has no message to come back: it is
        `failed`, so a new trigger of its slot, the scheduler or a replay runs it again.
        """
        now = self._clock()
        with translate_errors(), self._sessions() as s:
            rows = s.scalars(
                select(Run)
                .where(Run.status == RunStatus.RUNNING, Run.lease_expires_at < now)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                _record_claim(s, row)
                if row.mode == Mode.INLINE:
                    _set(row, RunStatus.FAILED, now, error=("LeaseExpired", _INLINE_GONE))
                else:
                    row.status = RunStatus.LOST
                    row.updated_at = now
                _event(s, row, now, detail="reaped: lease expired")
            s.commit()
            return len(rows)

    def record_missed(self, new: NewRun, *, detail: str) -> tuple[RunView, bool]:
        """Record a slot nobody ran as `missed`; a key already on the ledger keeps its row (returns False)."""
        now = self._clock()
        with translate_errors(), self._sessions() as s:
            try:
                with s.begin_nested():
                    row = _insert(s, new, now, status=RunStatus.MISSED, detail=detail)
                s.commit()
                return RunView.of(row), True
            except IntegrityError:
                s.rollback()
                existing = s.scalars(select(Run).where(Run.dispatch_key == new.dispatch_key)).one()
                return RunView.of(existing), False

    def latest_slots(self, *, jobs: Sequence[str]) -> Mapping[str, datetime]:
        """The latest slot each of `jobs` handled.

        A slot is handled by its scheduled run (the key without parameters, which an HTTP trigger of
        the slot shares) unless that failed: a publish that failed is owed, and a failed run may be
        triggered again. A dispatch with parameters, or a replay, is not the slot's run.
        """
        query = (
            select(Run.job, func.max(Run.slot))
            .where(
                Run.job.in_(list(jobs)),
                Run.dispatch_key.endswith(f":{keys.params_hash({})}", autoescape=True),
                Run.status != RunStatus.FAILED,
            )
            .group_by(Run.job)
        )
        with translate_errors(), self._sessions() as s:
            return {job: _utc(slot) for job, slot in s.execute(query) if slot is not None}

    def stale(
        self, cutoffs: Mapping[RunStatus, datetime], *, limit: int, jobs: Sequence[str] | None = None
    ) -> Sequence[RunView]:
        """Runs in one of the statuses of `cutoffs` whose last change is older than that status's
        cutoff, oldest first; of `jobs` only, if given."""
        query = (
            select(Run)
            .where(
                or_(*(and_(Run.status == status, Run.updated_at < at) for status, at in cutoffs.items())),
                *([Run.job.in_(list(jobs))] if jobs is not None else []),
            )
            .order_by(Run.updated_at)
            .limit(limit)
        )
        with translate_errors(), self._sessions() as s:
            return [RunView.of(r) for r in s.scalars(query)]

    def mark_requeued(self, key: str) -> None:
        """Note on a run waiting for a message (`queued`, `deferred`, `retrying`) that it was
        published again."""
        now = self._clock()
        with translate_errors(), self._sessions() as s:
            row = _lock(s, key)
            if row.status in _WAITING:
                row.updated_at = now
                _event(s, row, now, detail="message published again: none was seen for a while")
                s.commit()

    def purge_runs(self, *, finished_before: datetime, limit: int) -> int:
        """Delete up to `limit` ended runs finished before `finished_before`, with their events.

        A run that a replay points at (`replay_of`) stays until the replay itself goes.
        """
        replayed = select(Run.replay_of).where(Run.replay_of.is_not(None))
        with translate_errors(), self._sessions() as s:
            ids = list(
                s.scalars(
                    select(Run.id)
                    .where(
                        Run.status.in_([str(status) for status in FINAL]),
                        Run.finished_at < finished_before,
                        Run.id.not_in(replayed),
                    )
                    .order_by(Run.id)
                    .limit(limit)
                )
            )
            if ids:
                s.execute(delete(RunEvent).where(RunEvent.run_id.in_(ids)))
                s.execute(delete(Run).where(Run.id.in_(ids)))
            s.commit()
            return len(ids)

    def purge_run_events(self, *, before: datetime, limit: int) -> int:
        """Delete up to `limit` events of ended runs recorded before `before`, oldest first.

        A run still in play (`lost`, `queued`, `deferred`, ...) keeps its whole history.
        """
        ended = select(Run.id).where(Run.status.in_([str(status) for status in FINAL]))
        with translate_errors(), self._sessions() as s:
            ids = list(
                s.scalars(
                    select(RunEvent.id)
                    .where(RunEvent.at < before, RunEvent.run_id.in_(ended))
                    .order_by(RunEvent.id)
                    .limit(limit)
                )
            )
            if ids:
                s.execute(delete(RunEvent).where(RunEvent.id.in_(ids)))
            s.commit()
            return len(ids)

    # -- reading -------------------------------------------------------------------------------

    def get(self, key: str) -> RunView | None:
        with translate_errors(), self._sessions() as s:
            row = s.scalars(select(Run).where(Run.dispatch_key == key)).one_or_none()
            return RunView.of(row) if row else None

    def runs(
        self,
        *,
        job: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int | None = 50,
    ) -> Sequence[RunView]:
        """The newest runs first, optionally of one job or status, or queued since a time."""
        query = select(Run).order_by(Run.queued_at.desc(), Run.id.desc()).limit(limit)
        if job:
            query = query.where(Run.job == job)
        if status:
            query = query.where(Run.status == status)
        if since:
            query = query.where(Run.queued_at >= since)
        with translate_errors(), self._sessions() as s:
            return [RunView.of(r) for r in s.scalars(query)]

    def events(self, key: str) -> Sequence[EventView]:
        """The run's history, oldest first: its history rows, then what only the run row holds.

        The current attempt's claim (`running` at `claimed_at`) and success (`succeeded` at
        `finished_at`) are not written as history rows on the hot path; a run leaving `running`
        any other way writes its claim's row first (`_record_claim`).
        """
        with translate_errors(), self._sessions() as s:
            run = s.scalars(select(Run).where(Run.dispatch_key == key)).one_or_none()
            if run is None:
                return []
            query = select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id)
            history = [
                EventView(e.at, e.status, e.attempt, e.worker_host, e.worker_pid, e.detail)
                for e in s.scalars(query)
            ]
        written = {(e.status, e.attempt) for e in history}
        on_row: list[tuple[str, datetime]] = []
        if run.status in (RunStatus.RUNNING, RunStatus.SUCCEEDED) and run.claimed_at is not None:
            on_row.append((RunStatus.RUNNING.value, run.claimed_at))
        if run.status == RunStatus.SUCCEEDED and run.finished_at is not None:
            on_row.append((RunStatus.SUCCEEDED.value, run.finished_at))
        return history + [
            EventView(at, status, run.attempt, run.worker_host, run.worker_pid, None)
            for status, at in on_row
            if (status, run.attempt) not in written
        ]

    def latest_replay(self, run_id: int) -> RunView | None:
        """The newest run made by replaying run `run_id`, if retention left any."""
        query = select(Run).where(Run.replay_of == run_id).order_by(Run.id.desc()).limit(1)
        with translate_errors(), self._sessions() as s:
            row = s.scalars(query).one_or_none()
            return RunView.of(row) if row else None

    def expired_leases(self) -> int:
        """`running` runs whose lease has expired: their worker died and the reaper has not run yet."""
        now = self._clock()
        query = select(func.count()).where(Run.status == RunStatus.RUNNING, Run.lease_expires_at < now)
        with translate_errors(), self._engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def counts(self) -> Mapping[tuple[str, str], int]:
        """Runs per (job, status)."""
        with translate_errors(), self._sessions() as s:
            rows = s.execute(select(Run.job, Run.status, func.count()).group_by(Run.job, Run.status))
            return {(job, status): n for job, status, n in rows}


def _utc(value: datetime) -> datetime:
    # Aggregates bypass the column type, so SQLite hands back naive UTC datetimes.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _new_row(new: NewRun, now: datetime) -> dict[str, Any]:
    return {
        "job": new.job,
        "dispatch_key": new.dispatch_key,
        "message_id": new.message_id,
        "correlation_id": new.correlation_id,
        "trigger": new.trigger,
        "mode": new.mode,
        "status": RunStatus.QUEUED,
        "slot": new.slot,
        "params": dict(new.params),
        "attempt": 0,
        "duplicates": 0,
        "deferrals": 0,
        "queued_at": now,
        "updated_at": now,
        "replay_of": new.replay_of,
    }


#: A run in one of these is waiting for a message to carry it.
_WAITING = frozenset({RunStatus.QUEUED, RunStatus.DEFERRED, RunStatus.RETRYING})


def _unheld(row: Run, attempt: int | None, *, final: bool) -> bool:
    """Whether a verdict about a message that holds nothing may be written on `row`.

    Only on a run no attempt holds and that has not ended, so a late verdict never overwrites a
    run that another delivery is running or has finished. With `attempt` (the run's attempts
    when the verdict's claim looked), only if no attempt has started since: another copy of the
    message may have run one. A `lost` run's attempt may still be running (it overran its lease):
    a deferral leaves the run to it, while the copy waits to take it over. A capped copy's final
    verdict (dead-lettered or skipped) ends it: that copy was the message that would have taken
    the run over. Any other copy's leaves it to the holder's message.
    """
    statuses = CLAIMABLE if final and attempt is not None else CLAIMABLE - {RunStatus.LOST}
    return row.status in statuses and attempt in (None, row.attempt)


_INLINE_GONE = "the process running it inline stopped before it finished (its lease expired)"


def _event_row(row: RunView, now: datetime) -> dict[str, Any]:
    return {
        "run_id": row.id,
        "at": now,
        "status": row.status,
        "attempt": row.attempt,
        "worker_host": row.worker_host,
        "worker_pid": row.worker_pid,
    }


def _insert(
    s: Session,
    new: NewRun,
    now: datetime,
    *,
    status: RunStatus = RunStatus.QUEUED,
    detail: str | None = None,
) -> Run:
    row = Run(**{**_new_row(new, now), "status": status, "finished_at": now if status in FINAL else None})
    s.add(row)
    s.flush()
    _event(s, row, now, detail=detail)
    return row


def _lock(s: Session, key: str, *, missing: NewRun | None = None, now: datetime | None = None) -> Run:
    """The row of `key`, locked for this transaction; inserted from `missing` if absent."""
    query = select(Run).where(Run.dispatch_key == key).with_for_update()
    row = s.scalars(query).one_or_none()
    if row is not None:
        return row
    if missing is None or now is None:
        raise LookupError(key)
    try:
        with s.begin_nested():
            return _insert(s, missing, now)
    except IntegrityError:
        return s.scalars(query).one()


def _set(
    row: Run,
    status: RunStatus,
    now: datetime,
    *,
    error: tuple[str, str] | None = None,
    result: Mapping[str, Any] | None = None,
) -> None:
    row.status = status
    row.updated_at = now
    if status != RunStatus.RUNNING:
        row.lease_token = None
        row.lease_expires_at = None
        row.finished_at = now
    if error is not None:
        row.error_type = error[0][:200]
        row.error_message = error[1][:ERROR_CHARS]
    if result is not None:
        row.result = dict(result)


def _record_claim(s: Session, row: Run) -> None:
    """Write the `running` history row of an attempt leaving `running` other than by succeeding.

    Until then the run row held it (`claimed_at`), and it no longer does: a later attempt that
    does not set `claimed_at` (one claimed by code from before the column, during an upgrade,
    writes its own row) must not find this attempt's time there.
    """
    if row.status == RunStatus.RUNNING and row.claimed_at is not None:
        _event(s, row, row.claimed_at)
        row.claimed_at = None


def _event(s: Session, row: Run, now: datetime, *, detail: str | None = None) -> None:
    s.add(
        RunEvent(
            run_id=row.id,
            at=now,
            status=row.status,
            attempt=row.attempt,
            worker_host=row.worker_host,
            worker_pid=row.worker_pid,
            detail=detail[:ERROR_CHARS] if detail else None,
        )
    )
