"""compose.yaml stays true to the code: its commands, options and settings exist; its parts fit together."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from offload.cli import cli
from offload.settings import Settings

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OFFLOAD_SERVICES = ["migrate", "web", "worker", "scheduler"]


def resolve(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The click command an argv names, and the options it passes."""
    command: click.Command = cli
    args = list(argv)
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"`offload {' '.join(argv)}`: no command {args[0]!r}"
        command, args = sub, args[1:]
    return command, [a for a in args if a.startswith("--")]


@pytest.mark.parametrize("name", OFFLOAD_SERVICES)
def test_each_offload_service_runs_a_real_command_with_real_options(name: str) -> None:
    command, options = resolve(SERVICES[name]["command"])
    known = {opt for param in command.params for opt in param.opts}
    assert set(options) <= known, f"{name}: unknown options {set(options) - known}"
    assert not isinstance(command, click.Group), f"{name} names a group, not a command"


def test_every_environment_variable_is_a_setting_and_the_values_validate() -> None:
    env = SERVICES["web"]["environment"]
    fields = {f"OFFLOAD_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"unknown settings: {set(env) - fields}"
    values = {k.removeprefix("OFFLOAD_").lower(): v for k, v in env.items() if "${" not in v}
    settings = Settings(**values)
    assert urlsplit(settings.broker_url).hostname == "rabbitmq"
    assert urlsplit(settings.management_url).hostname == "rabbitmq"
    db = urlsplit(settings.database_url)
    pg = SERVICES["postgres"]["environment"]
    assert (db.hostname, db.username, db.password, db.path.lstrip("/")) == (
        "postgres",
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )


def test_servers_are_health_checked_and_waited_for() -> None:
    assert "management" in SERVICES["rabbitmq"]["image"]
    assert {"5672:5672", "15672:15672"} <= set(SERVICES["rabbitmq"]["ports"])
    for name in ("rabbitmq", "postgres", "web"):
        assert "healthcheck" in SERVICES[name], name
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker", "scheduler"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["rabbitmq"]["condition"] == "service_healthy"


def test_web_port_matches_the_published_port() -> None:
    command, _ = resolve(SERVICES["web"]["command"])
    port = next(p for p in command.params if "--port" in p.opts)
    published = SERVICES["web"]["ports"][0].split(":")[1]
    assert str(Settings.model_fields["web_port"].default) == published or str(port.default) == published
