"""SqlWebhookEvents: the webhook_events table, for the ingress (insert) and the drain (claim, mark)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from domain.ports import StoredWebhookEvent
from domain.webhooks import CORRELATION_HEADER
from store.db import PgStatement, make_sessions, translate_errors
from store.ledger import NewRun, RunView, SqlLedger, pg_record_after, record_params, recorded
from store.models import OutcomeText, WebhookEvent


@dataclass(frozen=True, kw_only=True)
class NewWebhookEvent:
    provider: str
    provider_event_id: str
    event_type: str
    lead_ref: str | None
    headers: Mapping[str, str]
    body: str
    status: str
    status_reason: str | None
    received_at: datetime
    queued_at: datetime | None


@dataclass(frozen=True)
class Stored:
    """An incoming event as stored: its id, whether it was known already, and its drain's run."""

    id: int
    duplicate: bool
    drain: RunView | None


class SqlWebhookIntake:
    """Stores an incoming event and, if it is to be queued, its drain's run, committed together.

    On PostgreSQL the event's id is drawn first and one statement then inserts the event, the run
    and the run's history row: two round trips, the answer's whole cost in the store. On SQLite it
    is one short transaction.

    Parameters:
      engine: the store's engine.
      ledger: the status ledger (its clock stamps the run).
    """

    def __init__(self, engine: Engine, ledger: SqlLedger) -> None:
        self._sessions = make_sessions(engine)
        self._ledger = ledger
        self._direct = ledger.direct  # on PostgreSQL; one set of connections for both

    def store(self, new: NewWebhookEvent, *, drain: Callable[[int], NewRun] | None) -> Stored:
        """Insert `new` unless its provider event id is known, with the run `drain(event id)` if given."""
        if self._direct is None:
            with translate_errors(), self._sessions() as s:
                event_id, duplicate = SqlWebhookEvents(s).add(new)
                run = None
                if drain is not None and not duplicate:
                    run, _ = self._ledger.record_dispatch(drain(event_id), conn=s.connection())
                s.commit()
                return Stored(event_id, duplicate, run)
        params = _event_params(new)
        if drain is None:
            (inserted,) = self._direct.run(_PG_ADD, params)
            run = None
        else:
            (params["e_id"],) = self._direct.run(_PG_NEXT_ID, {})
            now, new_run = self._ledger.now(), drain(params["e_id"])
            params.update(record_params(new_run, now))
            inserted, run_id = self._direct.run(_PG_ADD_WITH_RUN, params)
            run = recorded(new_run, now, run_id) if run_id is not None else None
        if inserted is not None:
            return Stored(int(inserted), False, run)
        with translate_errors(), self._sessions() as s:
            return Stored(SqlWebhookEvents(s).id_of(new), True, None)


class SqlWebhookEvents:
    def __init__(self, session: Session) -> None:
        self._s = session

    def add(self, new: NewWebhookEvent) -> tuple[int, bool]:
        """Insert the event unless its provider event id is known; returns (id, duplicate)."""
        values: dict[str, Any] = {f.name: getattr(new, f.name) for f in fields(new)}
        values["headers"] = dict(new.headers)
        values["attempts"] = 0
        conn = self._s.connection()  # Core, not an ORM-enabled insert: it is the ingress's hot path
        inserted = conn.execute(_INSERT_OR_NOTHING[conn.dialect.name], values).scalar_one_or_none()
        if inserted is not None:
            return int(inserted), False
        return self.id_of(new), True

    def id_of(self, new: NewWebhookEvent) -> int:
        """The id of the stored event with `new`'s provider event id."""
        return int(
            self._s.execute(
                select(WebhookEvent.id).where(
                    WebhookEvent.provider == new.provider,
                    WebhookEvent.provider_event_id == new.provider_event_id,
                )
            ).scalar_one()
        )

    def get(self, event_id: int) -> StoredWebhookEvent | None:
        row = self._s.get(WebhookEvent, event_id)
        return _view(row) if row is not None else None

    def lock(self, event_id: int) -> StoredWebhookEvent | None:
        row = self._s.scalars(
            select(WebhookEvent).where(WebhookEvent.id == event_id).with_for_update()
        ).one_or_none()
        return _view(row) if row is not None else None

    def older_open(self, event: StoredWebhookEvent, *, statuses: frozenset[str]) -> int | None:
        if event.lead_ref is None:
            return None
        older: int | None = self._s.execute(
            select(WebhookEvent.id)
            .where(
                WebhookEvent.lead_ref == event.lead_ref,
                WebhookEvent.id < event.id,
                WebhookEvent.status.in_(sorted(statuses)),
            )
            .order_by(WebhookEvent.id)
            .limit(1)
        ).scalar_one_or_none()
        return older

    def mark(
        self,
        event_id: int,
        *,
        status: str,
        reason: str | None,
        attempts: int | None = None,
        finished: bool = False,
    ) -> None:
        values: dict[str, Any] = {"status": status, "status_reason": reason}
        if attempts is not None:
            values["attempts"] = attempts
        if finished:
            values["processed_at"] = datetime.now(UTC)
        self._s.execute(update(WebhookEvent).where(WebhookEvent.id == event_id).values(**values))

    def due_for_redrive(
        self, *, statuses: frozenset[str], received_before: datetime, queued_before: datetime, limit: int
    ) -> list[StoredWebhookEvent]:
        rows = self._s.scalars(
            select(WebhookEvent)
            .where(
                WebhookEvent.status.in_(sorted(statuses)),
                WebhookEvent.received_at <= received_before,
                or_(WebhookEvent.queued_at.is_(None), WebhookEvent.queued_at <= queued_before),
            )
            .order_by(WebhookEvent.id)
            .limit(limit)
        ).all()
        return [_view(r) for r in rows]

    def mark_queued(self, event_id: int, *, at: datetime | None) -> None:
        self._s.execute(update(WebhookEvent).where(WebhookEvent.id == event_id).values(queued_at=at))

    def counts(self) -> dict[str, int]:
        """How many events are in each status."""
        query = select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status)
        return {status: int(n) for status, n in self._s.execute(query)}


def _insert_or_nothing(insert: Any) -> Any:
    """Built once: INSERT ... ON CONFLICT (provider, provider_event_id) DO NOTHING RETURNING id."""
    return (
        insert(WebhookEvent)
        .on_conflict_do_nothing(index_elements=["provider", "provider_event_id"])
        .returning(WebhookEvent.id)
    )


_INSERT_OR_NOTHING = {
    "postgresql": _insert_or_nothing(postgresql.insert),
    "sqlite": _insert_or_nothing(sqlite.insert),
}


# The PostgreSQL statements of SqlWebhookIntake; `id` is drawn first only when a run goes with it.
_PG_EVENT_COLUMNS = (*(f.name for f in fields(NewWebhookEvent)), "attempts")
_PG_EVENT = """event AS (
    INSERT INTO webhook_events ({columns})
    VALUES ({values})
    ON CONFLICT (provider, provider_event_id) DO NOTHING
    RETURNING id
)"""


def _pg_event(*, with_id: bool) -> str:
    columns = ("id", *_PG_EVENT_COLUMNS) if with_id else _PG_EVENT_COLUMNS
    values = ("CAST(%(e_headers)s AS JSON)" if c == "headers" else f"%(e_{c})s" for c in columns)
    return _PG_EVENT.format(columns=", ".join(columns), values=", ".join(values))


_PG_NEXT_ID = PgStatement("SELECT nextval(pg_get_serial_sequence('webhook_events', 'id'))")
_PG_ADD = PgStatement(f"WITH {_pg_event(with_id=False)} SELECT (SELECT id FROM event)")
_PG_ADD_WITH_RUN = PgStatement(
    f"WITH {_pg_event(with_id=True)}, {pg_record_after('event')} "
    "SELECT (SELECT id FROM event), (SELECT id FROM run)"
)


def _event_params(new: NewWebhookEvent) -> dict[str, Any]:
    values: dict[str, Any] = {f"e_{f.name}": getattr(new, f.name) for f in fields(new)}
    values["e_headers"] = json.dumps(dict(new.headers))
    values["e_status_reason"] = OutcomeText().process_bind_param(new.status_reason, None)
    values["e_attempts"] = 0
    return values


def _view(row: WebhookEvent) -> StoredWebhookEvent:
    columns = {f.name: getattr(row, f.name) for f in fields(StoredWebhookEvent) if f.name != "correlation_id"}
    return StoredWebhookEvent(**columns, correlation_id=(row.headers or {}).get(CORRELATION_HEADER))
