"""HTTP adapters for the calendar provider and the sending platform, configured by base URL and API key.

Every call has a timeout. Timeouts, connection errors, 5xx and 429 are retried with exponential backoff
and end as TransientError; any other 4xx, or a 2xx whose body is not what the API promises, is a
PermanentError at once (retrying cannot fix it).

The APIs (JSON; `Authorization: Bearer <api key>`):
  GET  {calendar}/calendars/{calendar_id}/busy?start=&end=      -> {"busy": [{"start", "end"}]}
  GET  {calendar}/calendars/{calendar_id}/bookings?start=&end=  -> {"bookings": [{"id", "lead_email",
                                                                     "start", "end", "status"}]}
  POST {platform}/emails  (header Idempotency-Key)              -> {"message_id": "..."}
  PUT  {platform}/workspaces/{workspace_id}/leads/{lead_ref}/variables  {"variables": {...}}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import requests

from domain.errors import PermanentError, TransientError
from domain.model import Interval
from domain.ports import Booking, OutgoingEmail

logger = logging.getLogger(__name__)

_BODY_CHARS = 300


class MalformedAnswer(PermanentError):
    """A 2xx answer that is not JSON."""


class HttpApi:
    """A JSON API client with timeouts, retries of transient faults and classified errors.

    Parameters:
      base_url: the API root, e.g. `https://calendar.example.com/v1`.
      api_key: sent as a bearer token.
      timeout_s: connect and read timeout of one attempt.
      max_attempts: attempts per call, the first included.
      backoff_s: wait before the second attempt; doubles after each further one.
      sleep: how to wait (tests pass a recorder).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout_s: float = 10.0,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._http = requests.Session()
        self._http.headers.update({"Authorization": f"Bearer {api_key}", "Accept": "application/json"})

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer (None for an empty body). Raises TransientError or PermanentError."""
        url = self.base_url + path
        error: TransientError | None = None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self._sleep(self.backoff_s * 2 ** (attempt - 2))
            try:
                response = self._http.request(
                    method, url, params=params, json=json, headers=headers, timeout=self.timeout_s
                )
            except (
                requests.Timeout,
                requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
            ) as e:
                error = TransientError(f"{method} {path}: {type(e).__name__}")
                logger.warning("Attempt %d of %s %s failed: %s", attempt, method, path, type(e).__name__)
                continue
            except requests.RequestException as e:
                raise PermanentError(f"{method} {path}: {type(e).__name__}: {e}") from e
            status = response.status_code
            if status >= 500 or status == 429:
                error = TransientError(f"{method} {path}: HTTP {status}")
                logger.warning("Attempt %d of %s %s answered %d", attempt, method, path, status)
                continue
            if status >= 400:
                raise PermanentError(f"{method} {path}: HTTP {status}: {response.text[:_BODY_CHARS]}")
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError as e:
                raise MalformedAnswer(f"{method} {path}: answer is not JSON") from e
        assert error is not None
        raise error


def _instant(value: Any, where: str) -> datetime:
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError as e:
        raise PermanentError(f"{where}: not an ISO 8601 time: {value!r}") from e
    if at.tzinfo is None:
        raise PermanentError(f"{where}: time without a UTC offset: {value!r}")
    return at


def _items(answer: Any, key: str, where: str) -> list[Mapping[str, Any]]:
    items = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise PermanentError(f"{where}: expected {{{key!r}: [objects]}}")
    return items


class HttpCalendar:
    """CalendarProvider over HTTP."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api

    def _window(self, calendar_id: str, what: str, start_at: datetime, end_at: datetime) -> Any:
        return self.api.call(
            "GET",
            f"/calendars/{quote(calendar_id, safe='')}/{what}",
            params={"start": start_at.isoformat(), "end": end_at.isoformat()},
        )

    def busy(self, *, calendar_id: str, start_at: datetime, end_at: datetime) -> list[Interval]:
        where = "calendar busy"
        try:
            return [
                Interval(_instant(i["start"], where), _instant(i["end"], where))
                for i in _items(self._window(calendar_id, "busy", start_at, end_at), "busy", where)
            ]
        except KeyError as e:
            raise PermanentError(f"{where}: missing {e}") from e

    def bookings(self, *, calendar_id: str, start_at: datetime, end_at: datetime) -> list[Booking]:
        where = "calendar bookings"
        answer = self._window(calendar_id, "bookings", start_at, end_at)
        try:
            return [
                Booking(
                    booking_id=str(i["id"]),
                    lead_email=i.get("lead_email"),
                    start_at=_instant(i["start"], where),
                    end_at=_instant(i["end"], where),
                    status=str(i.get("status", "booked")),
                )
                for i in _items(answer, "bookings", where)
            ]
        except KeyError as e:
            raise PermanentError(f"{where}: missing {e}") from e


class HttpEmailSender:
    """EmailSender over HTTP; the task's idempotency key goes in the `Idempotency-Key` header."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api

    def send(self, email: OutgoingEmail) -> str:
        """The platform's message id. An answer without one, though the platform took the email, is
        transient: the retry's idempotency key gets the email's id back instead of a second email."""
        try:
            answer = self.api.call(
                "POST",
                "/emails",
                json={
                    "workspace_id": email.workspace_id,
                    "to": email.to_email,
                    "subject": email.subject,
                    "body": email.body,
                    "thread_id": email.thread_id,
                },
                headers={"Idempotency-Key": email.idempotency_key},
            )
        except MalformedAnswer as e:
            raise TransientError(str(e)) from e
        message_id = answer.get("message_id") if isinstance(answer, dict) else None
        if not isinstance(message_id, str) or not message_id:
            raise TransientError("POST /emails: answer has no message_id")
        return message_id


class HttpLeadVariables:
    """LeadVariables over HTTP."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api

    def set(self, *, workspace_id: str, lead_ref: str, variables: Mapping[str, str]) -> None:
        self.api.call(
            "PUT",
            f"/workspaces/{quote(workspace_id, safe='')}/leads/{quote(lead_ref, safe='')}/variables",
            json={"variables": dict(variables)},
        )
