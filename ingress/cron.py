"""The cron trigger routes: `GET|POST /api/cron/{job}` dispatch the job's run for the current slot."""

from __future__ import annotations

from typing import Any

import falcon

from actors.dispatch import Dispatcher
from domain.runs import Mode, RunStatus, Trigger
from ingress.auth import CronAuth
from ingress.errors import JobFailed
from ingress.hooks import require_cron_secret


class CronTrigger:
    """Queue mode answers 202 with the dispatch; inline mode 200 with the job's result as well.

    Parameters:
      dispatcher: every trigger goes through it (dedup by dispatch key, ledger, queue or inline).
      auth: the bearer check of the cron callers.
    """

    def __init__(self, *, dispatcher: Dispatcher, auth: CronAuth) -> None:
        self.dispatcher = dispatcher
        self.auth = auth

    @falcon.before(require_cron_secret)
    def on_get(self, req: falcon.Request, resp: falcon.Response, job: str) -> None:
        dispatch = self.dispatcher.dispatch(
            job, trigger=Trigger.HTTP, correlation_id=req.context.correlation_id
        )
        body: dict[str, Any] = {"success": True, "dispatch": dispatch.asjson()}
        if dispatch.mode == Mode.QUEUE:
            resp.status = falcon.HTTP_202
            resp.media = body
            return
        if not dispatch.duplicate and dispatch.status not in (RunStatus.SUCCEEDED, RunStatus.SKIPPED):
            raise JobFailed(f"the inline run of {job} ended {dispatch.status}", details=body)
        body["result"] = dict(dispatch.result) if dispatch.result is not None else None
        resp.status = falcon.HTTP_200
        resp.media = body

    on_post = on_get
