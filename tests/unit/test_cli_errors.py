"""The `offload` command line answers bad options and database failures with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.procs import run_cli


def test_a_database_without_migrations_says_how_to_migrate_it(tmp_path: Path) -> None:
    env = {"OFFLOAD_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    result = run_cli(env, "runs")
    assert result.returncode == 1
    assert result.stderr.startswith("offload: database: ")
    assert "not migrated: run `offload db upgrade`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert run_cli(env, "db", "upgrade").returncode == 0
    assert run_cli(env, "runs").returncode == 0


def test_an_unreachable_database_is_one_line_without_a_migration_hint() -> None:
    result = run_cli({"OFFLOAD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/test"}, "runs")
    assert result.returncode == 1
    assert result.stderr.startswith("offload: database: ") and "port 1" in result.stderr
    assert "migrate" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("runs", "--status", "bogus"), "Invalid value for '--status': 'bogus' is not one of"),
        (("runs", "--limit", "0"), "Invalid value for '--limit'"),
        (("dispatch", "nope"), "unknown job 'nope'; known: background-jobs"),
        (("dispatch", "background-jobs", "-p", "novalue"), "expected KEY=VALUE, got 'novalue'"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    result = run_cli({"OFFLOAD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}, *args)
    assert result.returncode == 2
    assert fragment in result.stderr
