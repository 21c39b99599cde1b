"""Dispatch key math: deterministic, slot-bucketed, time-zone and DST aware."""

from __future__ import annotations

from datetime import UTC, datetime

from domain.keys import dispatch_key, message_id, params_hash, schedule_slot


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_params_hash_ignores_key_order() -> None:
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_every_moment_of_a_slot_gives_one_key() -> None:
    keys = {
        dispatch_key("followups", schedule_slot("*/5 * * * *", "UTC", utc(2026, 3, 1, 9, 5, s)), {})
        for s in (0, 1, 59)
    } | {dispatch_key("followups", schedule_slot("*/5 * * * *", "UTC", utc(2026, 3, 1, 9, 9, 59)), {})}
    assert keys == {"followups:2026-03-01T09:05Z:44136fa355b3"}


def test_the_fire_minute_itself_is_its_own_slot() -> None:
    assert schedule_slot("0 9 * * *", "UTC", utc(2026, 3, 1, 9, 0, 0)) == utc(2026, 3, 1, 9, 0)
    assert schedule_slot("0 9 * * *", "UTC", utc(2026, 3, 1, 8, 59, 59)) == utc(2026, 2, 28, 9, 0)


def test_slot_follows_the_jobs_time_zone_across_dst() -> None:
    # 09:00 in New York is 14:00 UTC in winter and 13:00 UTC after the March 8 2026 change.
    assert schedule_slot("0 9 * * *", "America/New_York", utc(2026, 3, 6, 15)) == utc(2026, 3, 6, 14)
    assert schedule_slot("0 9 * * *", "America/New_York", utc(2026, 3, 9, 15)) == utc(2026, 3, 9, 13)
    # 02:30 does not exist on the spring-forward day; the previous slot is the day before.
    slot = schedule_slot("30 2 * * *", "America/New_York", utc(2026, 3, 8, 12))
    assert slot.astimezone(UTC).date() <= datetime(2026, 3, 8).date()


def test_message_id_is_a_pure_function_of_the_key() -> None:
    assert message_id("a:b:c") == message_id("a:b:c") != message_id("a:b:d")
