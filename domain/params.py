"""Reading a job's parameters: bad values are permanent errors (retrying the same message cannot fix them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from domain.errors import PermanentError

T = TypeVar("T")


def int_param(params: Mapping[str, Any], name: str, default: int, *, minimum: int = 1) -> int:
    """`params[name]` as an int >= `minimum`, or `default` when absent."""
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PermanentError(f"parameter {name!r} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise PermanentError(f"parameter {name!r} must be an integer, got {value!r}") from None
    if number < minimum:
        raise PermanentError(f"parameter {name!r} must be >= {minimum}, got {number}")
    return number


def configured(port: T | None, name: str) -> T:
    """The port the composition root chose, or PermanentError when it chose none."""
    if port is None:
        raise PermanentError(f"no {name} is configured")
    return port
