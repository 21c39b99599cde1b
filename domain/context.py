"""What a job's domain function receives: one unit of work, its parameters, the time and the ports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.ports import Ports, UnitOfWork


@dataclass(frozen=True)
class JobContext:
    """`key` is the run's dispatch key: stable across the attempts of one run."""

    key: str
    uow: UnitOfWork
    params: Mapping[str, Any]
    now: datetime
    ports: Ports


#: A job's domain function: returns a small JSON-able summary (counts, `has_more`).
JobFn = Callable[[JobContext], Mapping[str, Any]]
