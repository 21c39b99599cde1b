"""The vocabulary of the status ledger: what a run can be, how it was triggered and where it ran."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    DEFERRED = "deferred"
    SKIPPED = "skipped"
    LOST = "lost"
    DEAD = "dead"
    MISSED = "missed"


class Trigger(StrEnum):
    HTTP = "http"
    SCHEDULE = "schedule"
    REPLAY = "replay"
    CLI = "cli"


class Mode(StrEnum):
    QUEUE = "queue"
    INLINE = "inline"


#: Statuses after which a new trigger of the same dispatch key may run again.
REOPENABLE = frozenset({RunStatus.FAILED})
#: Statuses a worker may claim a run from (besides a `running` row whose lease expired).
CLAIMABLE = frozenset(
    {RunStatus.QUEUED, RunStatus.RETRYING, RunStatus.DEFERRED, RunStatus.LOST, RunStatus.FAILED}
)
#: Statuses that end a run: nothing more happens to it unless it is replayed or re-triggered.
FINAL = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.SKIPPED, RunStatus.DEAD, RunStatus.MISSED}
)
