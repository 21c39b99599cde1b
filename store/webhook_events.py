"""SqlWebhookEvents: the webhook_events table, for the ingress (insert) and the drain (claim, mark)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from domain.ports import StoredWebhookEvent
from store.models import WebhookEvent


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
        existing = self._s.execute(
            select(WebhookEvent.id).where(
                WebhookEvent.provider == new.provider,
                WebhookEvent.provider_event_id == new.provider_event_id,
            )
        ).scalar_one()
        return int(existing), True

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

    def count(self, *, status: str | None = None) -> int:
        query = select(func.count()).select_from(WebhookEvent)
        if status is not None:
            query = query.where(WebhookEvent.status == status)
        return int(self._s.execute(query).scalar_one())


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


def _view(row: WebhookEvent) -> StoredWebhookEvent:
    return StoredWebhookEvent(**{f.name: getattr(row, f.name) for f in fields(StoredWebhookEvent)})
