"""SqlLeases: concurrency caps as expiring leases on numbered slots, shared by every worker and host."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Connection, Engine, Table, bindparam, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from store.db import translate_errors
from store.ledger import utcnow
from store.models import ConcurrencyLease

_leases = cast(Table, ConcurrencyLease.__table__)
# A holder is `<dispatch key>#<attempt token>`. A slot is free when released or expired, and a slot
# still held under the same dispatch key belongs to an attempt that was taken over (its worker died).
_mine = func.substr(_leases.c.holder, 1, bindparam("p_prefix_len")) == bindparam("p_prefix")
_takeable = or_(_leases.c.holder.is_(None), _leases.c.expires_at < bindparam("p_now"), _mine)
# One statement, built once: pick our own slot or else the lowest free one (skipping slots others are
# taking at this moment) and take it.
_ACQUIRE = (
    update(_leases)
    .where(
        _leases.c.job == bindparam("p_job"),
        _leases.c.slot_no
        == select(_leases.c.slot_no)
        .where(_leases.c.job == bindparam("p_job"), _leases.c.slot_no < bindparam("p_cap"), _takeable)
        .order_by(case((_mine, 0), else_=1), _leases.c.slot_no)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery(),
        _takeable,
    )
    .values(holder=bindparam("p_holder"), expires_at=bindparam("p_expires_at"))
)
_RELEASE = (
    update(_leases)
    .where(_leases.c.job == bindparam("p_job"), _leases.c.holder == bindparam("p_holder"))
    .values(holder=None, expires_at=None)
)


class SqlLeases:
    """A job with cap N has slots 0..N-1; a slot is free when released or its lease has expired.

    Parameters:
      engine: the store's engine.
      clock: returns the current UTC time.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._slots_made: set[tuple[str, int]] = set()

    def acquire(self, conn: Connection, job: str, *, cap: int, key: str, token: str, lease_s: float) -> bool:
        """Take a slot of `job` for the attempt `token` of run `key` until now + `lease_s`.

        Runs in the caller's transaction `conn`, the one that claimed the run, so the claim and the
        slot commit together. False when all `cap` slots are held by other runs. A slot an earlier
        attempt of the same run still holds (it died) is taken over at once.
        """
        now = self._clock()
        prefix = f"{key}#"
        with translate_errors():
            if (job, cap) not in self._slots_made:
                self._ensure_slots(conn, job, cap)
            taken = conn.execute(
                _ACQUIRE,
                {
                    "p_job": job,
                    "p_cap": cap,
                    "p_now": now,
                    "p_holder": prefix + token,
                    "p_prefix": prefix,
                    "p_prefix_len": len(prefix),
                    "p_expires_at": now + timedelta(seconds=lease_s),
                },
            )
            if taken.rowcount == 1:
                return True
            # Look again next time: slots made in a transaction that was rolled back do not exist.
            self._slots_made.discard((job, cap))
            return False

    def release(self, job: str, *, key: str, token: str, conn: Connection | None = None) -> None:
        """Free the slot this attempt holds, if it still holds it: in `conn`'s transaction, else its own."""
        params = {"p_job": job, "p_holder": f"{key}#{token}"}
        with translate_errors():
            if conn is not None:
                conn.execute(_RELEASE, params)
                return
            with self._engine.begin() as own:
                own.execute(_RELEASE, params)

    def held(self, job: str) -> int:
        """Slots of `job` held by a live lease right now."""
        now = self._clock()
        with translate_errors(), self._engine.connect() as conn:
            n = conn.scalar(
                select(func.count())
                .select_from(ConcurrencyLease)
                .where(
                    ConcurrencyLease.job == job,
                    ConcurrencyLease.holder.is_not(None),
                    ConcurrencyLease.expires_at >= now,
                )
            )
            return int(n or 0)

    def _ensure_slots(self, conn: Connection, job: str, cap: int) -> None:
        have = set(conn.scalars(select(_leases.c.slot_no).where(_leases.c.job == job)))
        for slot_no in set(range(cap)) - have:
            try:
                with conn.begin_nested():
                    conn.execute(insert(_leases).values(job=job, slot_no=slot_no))
            except IntegrityError:
                pass  # another worker made it first
        self._slots_made.add((job, cap))
