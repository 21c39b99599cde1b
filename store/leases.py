"""SqlLeases: concurrency caps as expiring leases on numbered slots, shared by every worker and host."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from store.db import translate_errors
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

#: The same rules as `_ACQUIRE`, as a PostgreSQL data-modifying CTE named `slot` for the ledger's
#: one-statement claim: it takes a slot only while the CTE `run` holds a claimable run.
PG_TAKE_SLOT = """slot AS (
    UPDATE concurrency_leases SET holder = %(p_holder)s, expires_at = %(p_expires_at)s
    WHERE job = %(p_job)s AND slot_no = (
        SELECT slot_no FROM concurrency_leases
        WHERE job = %(p_job)s AND slot_no < %(p_cap)s AND EXISTS (SELECT FROM run)
          AND (holder IS NULL OR expires_at < %(p_now)s OR starts_with(holder, %(p_prefix)s))
        ORDER BY starts_with(holder, %(p_prefix)s) IS NOT TRUE, slot_no
        LIMIT 1 FOR UPDATE SKIP LOCKED)
      AND (holder IS NULL OR expires_at < %(p_now)s OR starts_with(holder, %(p_prefix)s))
    RETURNING slot_no
)"""
#: `_RELEASE` as a PostgreSQL data-modifying CTE, for the ledger's one-statement completion.
PG_RELEASE_SLOT = """freed AS (
    UPDATE concurrency_leases SET holder = NULL, expires_at = NULL
    WHERE job = %(p_job)s AND holder = %(p_holder)s
)"""


def holder(key: str, token: str) -> str:
    return f"{key}#{token}"


def slot_params(job: str, *, cap: int, key: str, token: str, now: datetime, lease_s: float) -> dict[str, Any]:
    """The parameters of taking a slot of `job` for attempt `token` of run `key` until now + `lease_s`."""
    prefix = f"{key}#"
    return {
        "p_job": job,
        "p_cap": cap,
        "p_now": now,
        "p_holder": holder(key, token),
        "p_prefix": prefix,
        "p_prefix_len": len(prefix),
        "p_expires_at": now + timedelta(seconds=lease_s),
    }


class SqlLeases:
    """A job with cap N has slots 0..N-1; a slot is free when released or its lease has expired.

    The ledger takes a slot in the statement or transaction that claims a run (`SqlLedger.claim`)
    and frees it with the `succeeded` mark; `release` frees it after any other end.

    Parameters:
      engine: the store's engine.
      clock: returns the current UTC time (the ledger's).
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._clock = clock
        self._slots_made: set[tuple[str, int]] = set()

    def ensure(self, job: str, cap: int) -> None:
        """Make the slot rows of `job` up to `cap`, committed on their own; once per process."""
        if (job, cap) in self._slots_made:
            return
        with translate_errors(), self._engine.connect() as conn:
            have = set(conn.scalars(select(_leases.c.slot_no).where(_leases.c.job == job)))
            conn.rollback()
            for slot_no in set(range(cap)) - have:
                try:
                    with conn.begin():
                        conn.execute(insert(_leases).values(job=job, slot_no=slot_no))
                except IntegrityError:
                    pass  # another worker made it first
        self._slots_made.add((job, cap))

    def acquire(self, conn: Connection, params: dict[str, Any]) -> bool:
        """Take the slot `slot_params` describes in the caller's transaction; False if all are held."""
        return bool(conn.execute(_ACQUIRE, params).rowcount == 1)

    def release(self, job: str, *, key: str, token: str, conn: Connection | None = None) -> None:
        """Free the slot this attempt holds, if it still holds it: in `conn`'s transaction, else its own."""
        params = {"p_job": job, "p_holder": holder(key, token)}
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
