"""create_app: the Falcon WSGI application, built from the collaborators the composition root hands it."""

from __future__ import annotations

import falcon

from actors.dispatch import Dispatcher, DispatchError
from domain.errors import UnknownJob
from ingress import errors
from ingress.auth import CronAuth, WebhookAuth
from ingress.correlation import CorrelationId
from ingress.cron import CronTrigger
from ingress.health import Health, Probes, Ready
from ingress.intake import WebhookIntake
from ingress.openapi import OpenApi, document
from ingress.webhooks import EmailWebhooks
from store.errors import StoreError

DEFAULT_BODY_CAP_BYTES = 256 * 1024


def create_app(
    *,
    dispatcher: Dispatcher,
    intake: WebhookIntake,
    cron_auth: CronAuth,
    webhook_auth: WebhookAuth,
    probes: Probes,
    body_cap_bytes: int = DEFAULT_BODY_CAP_BYTES,
) -> falcon.App[falcon.Request, falcon.Response]:
    """The app; it keeps no state of its own beyond its collaborators, so waitress threads share it."""
    app = falcon.App(middleware=[CorrelationId()])
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/api/cron/{job}", CronTrigger(dispatcher=dispatcher, auth=cron_auth))
    app.add_route(
        "/api/webhooks/email",
        EmailWebhooks(intake=intake, auth=webhook_auth, body_cap_bytes=body_cap_bytes),
    )
    app.add_route("/healthz", Health())
    app.add_route("/readyz", Ready(probes=probes))
    app.add_route("/openapi.json", OpenApi(document=document(jobs=dispatcher.registry.names)))

    # Falcon picks the most specific handler by the exception's MRO; these are the only places
    # where an exception becomes an HTTP answer.
    app.add_error_handler(Exception, errors.unexpected)
    app.add_error_handler(falcon.HTTPError, errors.http_error)
    app.add_error_handler(errors.ApiError, errors.api_error)
    app.add_error_handler(UnknownJob, errors.unknown_job(dispatcher.registry.names))
    app.add_error_handler(DispatchError, errors.dispatch_error)
    app.add_error_handler(StoreError, errors.store_error)
    return app
