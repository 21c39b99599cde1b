"""Builds the runtime (store, broker, actors, dispatcher) from settings; the one place that wires."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from actors.broker import declare_actors, make_broker
from actors.dispatch import Dispatcher
from actors.drain_queue import DispatchDrainQueue
from actors.runner import JobRunner
from domain import background_jobs
from domain.email_events import HANDLERS
from domain.ports import Ports
from domain.registry import JOBS, Registry
from offload.settings import Settings, redact
from store import db
from store.http_providers import HttpApi, HttpCalendar, HttpEmailSender, HttpLeadVariables
from store.leases import SqlLeases
from store.ledger import SqlLedger
from store.local_providers import LocalCalendar, LocalEmailSender, LocalLeadVariables
from store.uow import SqlUnitOfWork
from store.webhook_events import SqlWebhookIntake


def default_ports() -> Ports:
    return Ports(background_handlers={"noop": background_jobs.noop}, webhook_handlers=HANDLERS)


def with_providers(ports: Ports, settings: Settings, sessions: sessionmaker[Session]) -> Ports:
    """`ports` with every provider it leaves unset chosen by settings: HTTP when a URL is set, else local."""

    def api(url: str, key: Any) -> HttpApi:
        return HttpApi(
            base_url=url,
            api_key=key.get_secret_value(),
            timeout_s=settings.provider_timeout_s,
            max_attempts=settings.provider_max_attempts,
            backoff_s=settings.provider_backoff_s,
        )

    calendar = ports.calendar or (
        HttpCalendar(api(settings.calendar_url, settings.calendar_api_key))
        if settings.calendar_url
        else LocalCalendar(sessions)
    )
    platform = (
        api(settings.sending_platform_url, settings.sending_platform_api_key)
        if settings.sending_platform_url
        else None
    )
    email = ports.email or (HttpEmailSender(platform) if platform else LocalEmailSender(sessions))
    lead_variables = ports.lead_variables or (
        HttpLeadVariables(platform) if platform else LocalLeadVariables(sessions)
    )
    return replace(ports, calendar=calendar, email=email, lead_variables=lead_variables)


@dataclass
class Runtime:
    settings: Settings
    registry: Registry
    engine: Engine
    sessions: sessionmaker[Session]
    ledger: SqlLedger
    leases: SqlLeases
    runner: JobRunner
    webhook_store: SqlWebhookIntake
    broker: Any
    actors: dict[str, Any]
    dispatcher: Dispatcher

    def uow(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.sessions)

    def ping_database(self) -> None:
        with db.translate_errors(), self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.broker.close()
        self.engine.dispose()


def build(
    settings: Settings, *, registry: Registry = JOBS, ports: Ports | None = None, worker: bool = False
) -> Runtime:
    """Everything a process needs; `worker` for a worker process (it waits out RabbitMQ's alarms)."""
    settings.check_jobs(registry.names)
    registry = settings.scheduled(registry)
    engine = db.make_engine(
        settings.database_url, pool_size=max(settings.worker_threads, settings.web_threads) + 2
    )
    sessions = db.make_sessions(engine)
    ledger = SqlLedger(engine)
    leases = ledger.leases
    ports = ports or default_ports()
    if ports.housekeeping is None:
        ports = replace(
            ports,
            housekeeping=ledger,
            ledger_retention_days=settings.ledger_retention_days,
            run_event_retention_days=settings.run_event_retention_days,
        )
    runner = JobRunner(
        ledger=ledger,
        leases=leases,
        uow=lambda: SqlUnitOfWork(sessions),
        ports=with_providers(ports, settings, sessions),
        lease_grace_s=settings.lease_grace_s,
    )
    broker = make_broker(url=settings.broker_url, ledger=ledger, leases=leases, wait_out_alarms=worker)
    actors = dict(declare_actors(broker, registry, runner))
    dispatcher = Dispatcher(
        registry=registry,
        ledger=ledger,
        actors=actors,
        runner=runner,
        inline_all=settings.inline,
        inline_jobs=settings.inline_jobs,
        broker_name=f"RabbitMQ at {redact(settings.broker_url)}",
    )
    if runner.ports.drain_queue is None:
        runner.ports = replace(runner.ports, drain_queue=DispatchDrainQueue(dispatcher))
    if runner.ports.requeue is None:
        runner.ports = replace(runner.ports, requeue=dispatcher)
    return Runtime(
        settings,
        registry,
        engine,
        sessions,
        ledger,
        leases,
        runner,
        SqlWebhookIntake(engine, ledger),
        broker,
        actors,
        dispatcher,
    )
