"""Helpers for domain tests: a store on one database, and a snapshot of the domain's tables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from domain.webhooks import EmailWebhook
from store import db
from store.local_providers import LocalCalendar, LocalEmailSender, LocalLeadVariables
from store.models import Base
from store.uow import SqlUnitOfWork

#: The tables of migration 0003: the domain's data and the local providers' data.
DOMAIN_TABLES = (
    "clients",
    "followup_sequences",
    "followup_steps",
    "campaigns",
    "leads",
    "messages",
    "response_timings",
    "followup_tasks",
    "availability_slots",
    "appointments",
    "lead_slot_pushes",
    "calendar_busy",
    "calendar_bookings",
    "sent_emails",
    "platform_lead_variables",
)
#: Columns the providers stamp with their own wall clock (like ledger timings, not the job's result).
PROVIDER_CLOCK_COLUMNS = {("sent_emails", "sent_at"), ("platform_lead_variables", "updated_at")}


@dataclass
class Store:
    engine: Engine
    sessions: sessionmaker[Session]

    def uow(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.sessions)

    @property
    def calendar(self) -> LocalCalendar:
        return LocalCalendar(self.sessions)

    def email(self, now: datetime) -> LocalEmailSender:
        return LocalEmailSender(self.sessions, clock=lambda: now)

    def lead_variables(self, now: datetime) -> LocalLeadVariables:
        return LocalLeadVariables(self.sessions, clock=lambda: now)

    def snapshot(self, *, ignore: Iterable[tuple[str, str]] = ()) -> dict[str, list[tuple[Any, ...]]]:
        return snapshot(self.engine, ignore=ignore)

    def rows(self, table: str) -> list[dict[str, Any]]:
        t = Base.metadata.tables[table]
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]


def open_store(url: str) -> Store:
    engine = db.make_engine(url)
    return Store(engine, db.make_sessions(engine))


def snapshot(engine: Engine, *, ignore: Iterable[tuple[str, str]] = ()) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every domain table in primary-key order, times in UTC, minus `ignore` (table, column)s."""
    skip = set(ignore)
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name in DOMAIN_TABLES:
            t = Base.metadata.tables[name]
            cols = [c for c in t.columns if (name, c.name) not in skip]
            rows = conn.execute(select(*cols).order_by(*t.primary_key.columns)).all()
            out[name] = [tuple(_plain(v) for v in r) for r in rows]
    return out


def _plain(value: Any) -> Any:
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def apply_events(
    uow: Callable[[], SqlUnitOfWork],
    handlers: Mapping[str, Any],
    events: list[EmailWebhook],
    *,
    now: datetime,
) -> None:
    """Apply each event in its own unit of work, as the webhook drain does (seeding, not the pipeline)."""
    for event in events:
        with uow() as u:
            handlers[event.event.type](u, event, now)
            u.commit()
