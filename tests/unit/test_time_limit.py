"""An inline run's time limit interrupts its own thread, and only its own run."""

from __future__ import annotations

import time

import pytest

from actors.runner import TimeLimit


def _busy(seconds: float) -> None:
    wake = time.monotonic() + seconds
    while time.monotonic() < wake:
        time.sleep(0.01)


def test_a_run_past_its_limit_is_interrupted_with_its_own_exception() -> None:
    limit = TimeLimit(0.1)
    started = time.monotonic()
    with pytest.raises(limit.exceeded), limit:
        _busy(5)
    assert time.monotonic() - started < 2


def test_an_enclosing_limits_interrupt_is_not_taken_for_an_inner_runs() -> None:
    """A job running another inline must not record the outer run's time limit as its own failure
    and carry on: the outer run is the one that overran."""
    outer, inner = TimeLimit(0.1), TimeLimit(10)
    caught_inside = False
    with pytest.raises(outer.exceeded), outer:
        try:
            with inner:
                _busy(5)
        except inner.exceeded:
            caught_inside = True
    assert not caught_inside
