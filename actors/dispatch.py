"""The dispatch API every trigger uses: HTTP routes, the scheduler, the CLI and replays."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pika.exceptions import AMQPError

from actors import log_ids
from actors.broker import ready_messages
from actors.runner import JobRunner
from domain import keys
from domain.registry import JobSpec, Registry
from domain.runs import Mode, RunStatus, Trigger
from store.errors import StoreError
from store.ledger import NewRun, RunView, SqlLedger, utcnow

logger = logging.getLogger(__name__)

#: Runs an operator may dispatch again: ended without success, and no message left to carry them. A
#: `lost` run is not one: RabbitMQ redelivers its message, which takes the run over.
REPLAYABLE = frozenset({RunStatus.DEAD, RunStatus.FAILED, RunStatus.MISSED})


class DispatchError(Exception):
    """Root of dispatch failures."""


class PublishFailed(DispatchError):
    """The broker did not take the message; nothing ran. The run is `failed` and may be re-triggered."""

    def __init__(self, broker: str, reason: str) -> None:
        super().__init__(f"could not publish to {broker}: {reason}")
        self.broker = broker
        self.reason = reason


@dataclass(frozen=True)
class Dispatch:
    """What a trigger gets back: the identity of the run and its status right now."""

    mode: str
    job: str
    dispatch_key: str
    message_id: str
    correlation_id: str
    slot: datetime | None
    duplicate: bool
    status: str
    run_id: int
    result: Mapping[str, Any] | None = None

    def asjson(self) -> dict[str, Any]:
        """The `dispatch` object of HTTP answers and CLI output (stable keys, camelCase)."""
        return {
            "mode": self.mode,
            "job": self.job,
            "dispatchKey": self.dispatch_key,
            "messageId": self.message_id,
            "correlationId": self.correlation_id,
            "slot": self.slot.isoformat() if self.slot else None,
            "duplicate": self.duplicate,
            "status": self.status,
            "runId": self.run_id,
        }


class Dispatcher:
    """Turns a trigger into at most one run per dispatch key, queued on RabbitMQ or run inline.

    Parameters:
      registry: the jobs.
      ledger: the status ledger (and dedup record).
      actors: job name -> Dramatiq actor, for queue mode.
      runner: runs a job in-process, for inline mode.
      inline_all: run every job inline.
      inline_jobs: run these jobs inline.
      broker_name: how a publish failure names the broker (no credentials).
      clock: the current UTC time.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        ledger: SqlLedger,
        actors: Mapping[str, Any],
        runner: JobRunner,
        inline_all: bool = False,
        inline_jobs: frozenset[str] = frozenset(),
        broker_name: str = "RabbitMQ",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.registry = registry
        self.ledger = ledger
        self.actors = actors
        self.runner = runner
        self.inline_all = inline_all
        self.inline_jobs = inline_jobs
        self.broker_name = broker_name
        self.clock = clock

    def is_inline(self, job: str) -> bool:
        return self.inline_all or job in self.inline_jobs

    def new_run(
        self,
        spec: JobSpec,
        *,
        params: Mapping[str, Any],
        trigger: str,
        mode: Mode,
        correlation_id: str | None,
        slot: datetime | None,
        key: str | None = None,
        replay_of: int | None = None,
    ) -> NewRun:
        if slot is None and key is None:
            # A job without a schedule is triggered only: its slot is the minute, so a retried
            # trigger dedups while later triggers run again.
            slot = keys.schedule_slot(spec.cron or "* * * * *", spec.tz, self.clock())
        key = key or keys.dispatch_key(spec.name, slot, params)
        return NewRun(
            job=spec.name,
            dispatch_key=key,
            message_id=keys.message_id(key),
            # Unless given: the id of the request or message this thread serves, so a chain shares one.
            correlation_id=correlation_id or log_ids.correlation_id.get() or uuid.uuid4().hex,
            trigger=trigger,
            mode=mode,
            slot=slot,
            params=dict(params),
            replay_of=replay_of,
        )

    def dispatch(
        self,
        job: str,
        *,
        trigger: str,
        params: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        slot: datetime | None = None,
        key: str | None = None,
        inline: bool | None = None,
        replay_of: int | None = None,
    ) -> Dispatch:
        """Record and start the run of `job` for its current slot (or `slot`, or an explicit `key`).

        Raises UnknownJob, PublishFailed, and StoreError when the ledger cannot be written.
        """
        mode = Mode.INLINE if (self.is_inline(job) if inline is None else inline) else Mode.QUEUE
        new = self.prepare(
            job,
            trigger=trigger,
            params=params,
            correlation_id=correlation_id,
            slot=slot,
            key=key,
            mode=mode,
            replay_of=replay_of,
        )
        run, duplicate = self.ledger.record_dispatch(new)
        if duplicate:
            logger.info("Duplicate dispatch of %r (run is %s)", new.dispatch_key, run.status)
            return _answer(mode, run, duplicate=True)
        if mode == Mode.INLINE:
            try:
                outcome = self.runner.run_inline(self.registry[job], new)
            except Exception as e:
                self._fail_unstarted(run, e)
                raise
            return _answer(mode, outcome.run, duplicate=False, result=outcome.result)
        self.publish(run)
        return _answer(mode, run, duplicate=False)

    def prepare(
        self,
        job: str,
        *,
        trigger: str,
        params: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        slot: datetime | None = None,
        key: str | None = None,
        mode: Mode = Mode.QUEUE,
        replay_of: int | None = None,
    ) -> NewRun:
        """The run a dispatch of `job` stands for (its key, message id, correlation id), not yet recorded."""
        return self.new_run(
            self.registry[job],
            params=params or {},
            trigger=trigger,
            mode=mode,
            correlation_id=correlation_id,
            slot=slot,
            key=key,
            replay_of=replay_of,
        )

    def replay(
        self,
        key: str,
        *,
        correlation_id: str | None = None,
        trigger: str = Trigger.REPLAY,
        ended: frozenset[RunStatus] = REPLAYABLE,
    ) -> Dispatch:
        """Dispatch a run that ended in one of `ended` (dead, failed or missed) again, as a new run with
        `replay_of` lineage.

        The new key is `<key>~replay<n>`, n one more than the newest replay's, so two operators
        replaying the same run at once get one replay. While the latest replay has not ended in one of
        `ended`, replaying again answers it as a duplicate. Raises LookupError for an unknown key and
        ValueError for a run that has not ended so.
        """
        run = self.ledger.get(key)
        if run is None:
            raise LookupError(f"no run with dispatch key {key!r}")
        if run.status not in ended:
            raise ValueError(
                f"run {key!r} is {run.status}; only {', '.join(sorted(ended))} runs are replayed"
            )
        latest = self.ledger.latest_replay(run.id)
        if latest is not None and latest.status not in ended:
            return _answer(latest.mode, latest, duplicate=True)
        # Numbered after the newest replay still on the ledger: retention may have purged older ones.
        n = int(latest.dispatch_key.rsplit("~replay", 1)[1]) + 1 if latest is not None else 1
        return self.dispatch(
            run.job,
            trigger=trigger,
            params=run.params,
            key=f"{key}~replay{n}",
            correlation_id=correlation_id or run.correlation_id,
            replay_of=run.id,
        )

    def miss(self, job: str, *, slot: datetime, detail: str) -> Dispatch:
        """Record that `job` did not run in `slot` (status `missed`); a slot already on the ledger is kept.

        Raises UnknownJob, and StoreError when the ledger cannot be written.
        """
        spec = self.registry[job]
        mode = Mode.INLINE if self.is_inline(job) else Mode.QUEUE
        new = self.new_run(
            spec, params={}, trigger=Trigger.SCHEDULE, mode=mode, correlation_id=None, slot=slot
        )
        run, recorded = self.ledger.record_missed(new, detail=detail)
        if recorded:
            logger.info("Recorded %r as missed: %s", new.dispatch_key, detail)
        return _answer(mode, run, duplicate=not recorded)

    def waiting_too_long(self, queued_before: datetime) -> dict[RunStatus, datetime]:
        """When a run waiting for a message has lost it: `queued` or `deferred` (re-deferred every
        second or two) since before `queued_before`, `retrying` since before that less the longest
        retry backoff of any job."""
        backoff = timedelta(milliseconds=max(spec.longest_backoff_ms for spec in self.registry))
        return {
            RunStatus.QUEUED: queued_before,
            RunStatus.DEFERRED: queued_before,
            RunStatus.RETRYING: queued_before - backoff,
        }

    def requeue_stale(self, *, queued_before: datetime, limit: int) -> int:
        """Publish again the runs waiting too long for a message (`waiting_too_long`); returns how many.

        A process that died between recording a run and publishing it, or a purged queue, leaves a
        run that no message carries. The message id derives from the key, so if the first message
        does turn up, Dedup lets only one of the two run. A job whose queue or delay queue (where
        deferrals and retries wait) holds ready messages is left alone: its runs' messages may be
        waiting there (a backlog, workers down), and a copy of each, every few minutes, would only
        lengthen the wait. Stops at the first failed publish.
        """
        names = self.registry.names
        cutoffs = self.waiting_too_long(queued_before)
        if not self.ledger.stale(cutoffs, limit=1, jobs=names):
            return 0
        broker = next(iter(self.actors.values())).broker
        queues = {job: (self.registry[job].queue, f"{self.registry[job].queue}.DQ") for job in names}
        try:
            ready = ready_messages(broker, {q for pair in queues.values() for q in pair})
        except AMQPError as e:
            logger.warning("Cannot ask RabbitMQ for queue depths (%s); requeueing nothing this time.", e)
            return 0
        idle = [job for job, pair in queues.items() if not any(ready[q] for q in pair)]
        done = 0
        for run in self.ledger.stale(cutoffs, limit=limit, jobs=idle):
            try:
                self.publish(run)
            except PublishFailed:
                break
            self.ledger.mark_requeued(run.dispatch_key)
            done += 1
        return done

    def _fail_unstarted(self, run: RunView, error: Exception) -> None:
        """Mark `failed` an inline run that stopped before its claim (a store error): no message
        carries it, and a new trigger of its key must run it rather than find a duplicate."""
        try:
            self.ledger.finish(
                run.dispatch_key,
                RunStatus.FAILED,
                token=None,
                attempt=run.attempt,  # an attempt that did start records its own end
                error=error,
                detail=f"inline run did not start: {type(error).__name__}",
            )
        except StoreError as e:
            logger.warning("Could not mark inline run %r failed: %s", run.dispatch_key, e)

    def publish(self, run: RunView) -> None:
        """Send the run's message; on failure mark the run `failed` and raise PublishFailed.

        The message counts the run's attempts so far as dramatiq's retries, so a run published
        again after a failed attempt gets only the retries it has left.
        """
        actor = self.actors[run.job]
        message = actor.message_with_options(
            args=(run.dispatch_key, run.params),
            correlation_id=run.correlation_id,
            trigger=run.trigger,
            retries=run.attempt,
        ).copy(message_id=run.message_id)
        try:
            actor.broker.enqueue(message)
        except Exception as e:
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self.ledger.finish(
                run.dispatch_key,
                RunStatus.FAILED,
                token=None,
                attempt=run.attempt,
                error=e,
                detail=f"enqueue failed: {reason}",
            )
            raise PublishFailed(self.broker_name, reason) from e


def _answer(mode: str, run: RunView, *, duplicate: bool, result: Mapping[str, Any] | None = None) -> Dispatch:
    return Dispatch(
        mode=mode,
        job=run.job,
        dispatch_key=run.dispatch_key,
        message_id=run.message_id,
        correlation_id=run.correlation_id,
        slot=run.slot,
        duplicate=duplicate,
        status=run.status,
        run_id=run.id,
        result=result,
    )
