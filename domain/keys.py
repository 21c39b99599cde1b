"""Dispatch keys: the deterministic identity of one run of one job in one schedule slot."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from domain.cron import latest_fire

_NAMESPACE = uuid.UUID("6f1d2a4e-5b0c-4c1e-9a57-0ff10ad0f10a")


def params_hash(params: Mapping[str, Any]) -> str:
    """Twelve hex digits of SHA-256 over the canonical JSON of `params` (key order does not matter)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def schedule_slot(cron: str, tz: str, now: datetime) -> datetime:
    """The latest fire time of `cron` in zone `tz` at or before `now`, returned in UTC."""
    return latest_fire(cron, tz, now=now)


def dispatch_key(job: str, slot: datetime | None, params: Mapping[str, Any]) -> str:
    """`job:slot:paramhash`, e.g. `followups:2026-11-29T09:05Z:44136fa355b3`; no slot for unscheduled work."""
    slot_text = slot.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ") if slot is not None else "-"
    return f"{job}:{slot_text}:{params_hash(params)}"


def message_id(key: str) -> str:
    """The broker message id of a dispatch key: a UUID5, so every trigger of the key names one message."""
    return str(uuid.uuid5(_NAMESPACE, key))
