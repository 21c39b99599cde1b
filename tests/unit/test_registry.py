"""A job's declaration is refused when RabbitMQ could not hold its messages the way it needs."""

from __future__ import annotations

import re

import pytest

from domain.registry import JobSpec


def _noop(ctx: object) -> dict[str, object]:
    return {}


def test_the_longest_backoff_doubles_the_shortest_per_retry_up_to_the_cap() -> None:
    assert JobSpec(name="j", run=_noop, actor_name="j", description="").longest_backoff_ms == 480_000
    spec = JobSpec(name="j", run=_noop, actor_name="j", description="", max_retries=20, max_backoff_ms=60_000)
    assert spec.longest_backoff_ms == 60_000


@pytest.mark.parametrize(
    ("options", "what"),
    [
        ({"time_limit_ms": 1_800_000}, "time_limit_ms (1800000 ms)"),
        ({"max_retries": 8}, "its longest retry backoff (3600000 ms)"),  # 15 s doubled 8 times, capped at 1 h
    ],
)
def test_a_wait_past_rabbitmqs_consumer_timeout_is_refused(options: dict[str, int], what: str) -> None:
    """A worker holds a message unacked while it runs, and a delayed retry until it is due: past 30
    minutes RabbitMQ closes the channel and every message on it goes back to its queue."""
    with pytest.raises(ValueError, match=re.escape(f"job 'j': {what} must stay below RabbitMQ's 30-minute")):
        JobSpec(name="j", run=_noop, actor_name="j", description="", **options)  # type: ignore[arg-type]
