"""JobRunner: runs one attempt of a job's domain function, in a worker or inline, behind the same guards."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dramatiq.middleware import SkipMessage
from dramatiq.middleware.time_limit import TimeLimitExceeded
from dramatiq.threading import raise_thread_exception

from actors import attempt, log_ids
from domain.context import JobContext
from domain.ports import Ports
from domain.registry import JobSpec
from domain.runs import RunStatus
from store.errors import LeaseLost
from store.leases import SqlLeases
from store.ledger import NewRun, RunView, SqlLedger, utcnow
from store.uow import SqlUnitOfWork

logger = logging.getLogger(__name__)

#: How often an inline run polls for a free slot, and for how long at most.
INLINE_POLL_S = 0.2
INLINE_MAX_WAIT_S = 30.0


@dataclass(frozen=True)
class InlineOutcome:
    run: RunView
    result: Mapping[str, Any] | None


class JobRunner:
    """Executes domain functions; the `succeeded` mark commits with the job's last unit of work.

    A job that commits progress in batches (`uow.commit()`) keeps each batch idempotent; the final
    batch and the mark commit together, fenced by the attempt's lease token, so a zombie attempt
    whose run was taken over cannot record success or commit its last batch.

    Parameters:
      ledger, leases: the guards' stores.
      uow: makes a unit of work over the store.
      ports: the adapters handed to every job.
      lease_grace_s: added to a job's time limit to get its lease length.
      clock: the current UTC time.
    """

    def __init__(
        self,
        *,
        ledger: SqlLedger,
        leases: SqlLeases,
        uow: Callable[[], SqlUnitOfWork],
        ports: Ports,
        lease_grace_s: float = attempt.DEFAULT_LEASE_GRACE_S,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ledger = ledger
        self.leases = leases
        self.uow = uow
        self.ports = ports
        self.lease_grace_s = lease_grace_s
        self.clock = clock

    def lease_s(self, spec: JobSpec) -> float:
        return spec.time_limit_ms / 1000 + self.lease_grace_s

    def execute(
        self,
        spec: JobSpec,
        key: str,
        token: str,
        params: Mapping[str, Any],
        *,
        body_done: Callable[[], None] = lambda: None,
    ) -> Mapping[str, Any]:
        """Call the domain function; commit its last work with the fenced `succeeded` mark and the slot.

        `body_done` is called when the domain function has returned, before the mark.
        """
        started_at = self.ledger.now()
        with self.uow() as uow:
            result = spec.run(JobContext(key=key, uow=uow, params=params, now=self.clock(), ports=self.ports))
            body_done()
            session = uow.session if uow.begun else None
            self.ledger.complete_in(session, key, token, result, job=spec.name, started_at=started_at)
            uow.commit()
        logger.info("Run %r succeeded: %s", key, dict(result))
        return result

    def run_in_worker(self, spec: JobSpec, key: str, params: Mapping[str, Any]) -> None:
        """The actor body: the attempt was claimed by Dedup in this thread."""
        state = attempt.current.get()
        if state is None or state.key != key or state.token is None:
            raise RuntimeError(f"{spec.actor_name} ran without a claim on {key!r}: is Dedup installed?")
        try:
            self.execute(spec, key, state.token, params)
        except LeaseLost:
            # Another attempt took the run over while this one ran: its work was rolled back and
            # the run is theirs. Retrying would only find a duplicate.
            logger.warning("Run %r was taken over by another attempt; dropping this one.", key)
            raise SkipMessage(f"lease of {key} lost") from None
        state.holds_slot = False  # released with the `succeeded` mark

    def run_inline(self, spec: JobSpec, new: NewRun) -> InlineOutcome:
        """Run in this process through the same claim, slot and ledger writes as a worker, in that order.

        While it runs, logs and the dispatches it makes carry its ids, as a worker's do (LogContext).
        """
        tokens = (log_ids.correlation_id.set(new.correlation_id), log_ids.message_id.set(new.message_id))
        try:
            return self._run_inline(spec, new)
        finally:
            log_ids.correlation_id.reset(tokens[0])
            log_ids.message_id.reset(tokens[1])

    def _run_inline(self, spec: JobSpec, new: NewRun) -> InlineOutcome:
        lease_s = self.lease_s(spec)
        key = new.dispatch_key
        deadline = time.monotonic() + min(INLINE_MAX_WAIT_S, spec.max_wait_ms / 1000)
        while True:
            claim = self.ledger.claim(
                new,
                cap=spec.concurrency_cap,
                lease_s=lease_s,
                worker=attempt.this_worker(),
                max_attempts=1 << 30,
            )
            if claim.token is not None:
                break
            if claim.outcome != "capped":
                assert claim.run is not None, "a refused claim says why"
                return InlineOutcome(claim.run, None)
            if spec.overlap == "skip" or time.monotonic() > deadline:
                status = RunStatus.SKIPPED if spec.overlap == "skip" else RunStatus.FAILED
                detail = f"concurrency cap {spec.concurrency_cap} reached"
                verdict = self._finished(key, status, token=None, attempt=claim.attempt, detail=detail)
                return InlineOutcome(verdict, None)
            time.sleep(INLINE_POLL_S)
        token = claim.token
        limit = TimeLimit(spec.time_limit_ms / 1000)
        try:
            with limit:  # over the job's body: an interrupt must not land in its success mark
                result = self.execute(spec, key, token, new.params, body_done=limit.disarm)
        except (Exception, limit.exceeded) as e:
            logger.exception("Inline run %r failed", key)
            try:
                run = self._finished(key, RunStatus.FAILED, token=token, error=e)
            finally:
                self.leases.release(spec.name, key=key, token=token)
            return InlineOutcome(run, None)
        final = self.ledger.get(key)
        assert final is not None
        return InlineOutcome(final, result)

    def _finished(self, key: str, status: RunStatus, **how: Any) -> RunView:
        """Move the run to `status`; the run as it stands if another delivery got there first."""
        run = self.ledger.finish(key, status, **how) or self.ledger.get(key)
        assert run is not None
        return run


class TimeLimit:
    """Interrupts this thread after `seconds`, as dramatiq's TimeLimit does a worker's, so an
    inline run's body ends before its lease does (no other attempt can take over a run still running).
    Like dramatiq's, it cannot cut a system call short: it lands when the call returns.

    It raises `exceeded`, a TimeLimitExceeded of its own, so an enclosing limit's interrupt (a
    worker's, or an outer inline run's) is not taken for this one's.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.exceeded: type[TimeLimitExceeded] = type("TimeLimitExceeded", (TimeLimitExceeded,), {})
        self._lock = threading.Lock()
        self._armed = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> None:
        thread = threading.get_ident()
        self._armed = True
        self._timer = threading.Timer(self.seconds, self._interrupt, (thread,))
        self._timer.daemon = True
        self._timer.start()

    def __exit__(self, *exc: object) -> None:
        self.disarm()

    def disarm(self) -> None:
        """No interrupt after this returns; one already raised lands here at the latest."""
        with self._lock:
            self._armed = False
        assert self._timer is not None
        self._timer.cancel()

    def _interrupt(self, thread: int) -> None:
        with self._lock:
            if self._armed:
                self._armed = False
                logger.warning("Inline run exceeded its time limit of %.1f s; interrupting it.", self.seconds)
                raise_thread_exception(thread, self.exceeded)  # type: ignore[no-untyped-call]
