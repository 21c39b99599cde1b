"""SqlLeases: concurrency caps as expiring leases on numbered slots, shared by every worker and host."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from store.db import translate_errors
from store.ledger import utcnow
from store.models import ConcurrencyLease


class SqlLeases:
    """A job with cap N has slots 0..N-1; a slot is free when released or its lease has expired.

    Parameters:
      sessions: a session factory bound to the store's engine.
      clock: returns the current UTC time.
    """

    def __init__(self, sessions: sessionmaker[Session], *, clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock

    def acquire(self, job: str, *, cap: int, holder: str, lease_s: float) -> bool:
        """Take a free slot of `job` for `holder` until now + `lease_s`; False when all `cap` are held."""
        now = self._clock()
        with translate_errors(), self._sessions() as s:
            self._ensure_slots(s, job, cap)
            for slot_no in range(cap):
                taken = s.execute(
                    update(ConcurrencyLease)
                    .where(
                        ConcurrencyLease.job == job,
                        ConcurrencyLease.slot_no == slot_no,
                        or_(ConcurrencyLease.holder.is_(None), ConcurrencyLease.expires_at < now),
                    )
                    .values(holder=holder, expires_at=now + timedelta(seconds=lease_s))
                )
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    s.commit()
                    return True
            s.commit()
            return False

    def release(self, job: str, *, holder: str) -> None:
        with translate_errors(), self._sessions() as s:
            s.execute(
                update(ConcurrencyLease)
                .where(ConcurrencyLease.job == job, ConcurrencyLease.holder == holder)
                .values(holder=None, expires_at=None)
            )
            s.commit()

    def held(self, job: str) -> int:
        """Slots of `job` held by a live lease right now."""
        now = self._clock()
        with translate_errors(), self._sessions() as s:
            n = s.scalar(
                select(func.count())
                .select_from(ConcurrencyLease)
                .where(
                    ConcurrencyLease.job == job,
                    ConcurrencyLease.holder.is_not(None),
                    ConcurrencyLease.expires_at >= now,
                )
            )
            return int(n or 0)

    @staticmethod
    def _ensure_slots(s: Session, job: str, cap: int) -> None:
        have = set(s.scalars(select(ConcurrencyLease.slot_no).where(ConcurrencyLease.job == job)))
        for slot_no in range(cap):
            if slot_no in have:
                continue
            try:
                with s.begin_nested():
                    s.add(ConcurrencyLease(job=job, slot_no=slot_no))
            except IntegrityError:
                pass  # another worker created it first
