"""The bench commands keep working: every side drains, and the guarded side's ledger is checked."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from offload.settings import Settings
from tests.support.procs import ROOT, env_for


def bench(settings: Settings, *args: str, timeout_s: float) -> str:
    """`offload bench ARGS`' standard output; fails the test if the command fails."""
    out = subprocess.run(
        [sys.executable, "-m", "offload", "bench", *args],
        cwd=ROOT,
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_pipeline_benchmark_drains_both_sides_and_prints_their_ratio(settings: Settings) -> None:
    args = ("pipeline", "--messages", "40", "--threads", "4", "--rounds", "2")
    stdout = bench(settings, *args, timeout_s=180)
    assert "rounds: 2" in stdout, stdout
    rates = re.findall(r":\s+(\d+) \[(\d+)-(\d+)\] msg/s .*cpu\s+(\d+) us/msg", stdout)
    assert len(rates) == 3, stdout
    for median, low, high, cpu in rates:
        assert 0 < int(low) <= int(median) <= int(high) and int(cpu) > 0, stdout
    for ratio in ("guarded/bare", "floor/bare"):
        assert re.search(rf"ratio {ratio}:\s+\d+\.\d\d \[\d+\.\d\d-\d+\.\d\d\]", stdout), stdout
    assert re.search(r"\d+ us/msg, postgres\s+\d+, rabbitmq\s+\d+;", stdout), stdout  # both run here
    assert re.search(r"CPU-bound rate on \d+ cores .*guarded \d+ msg/s = \d+\.\d\d x bare", stdout), stdout


def test_the_ingress_benchmark_loses_no_event_and_reports_both_servers(settings: Settings) -> None:
    args = ["ingress", "--count", "40", "--warmup", "5", "--json", "--database-url", settings.database_url]
    figures = json.loads(bench(settings, *args, timeout_s=180))
    assert figures["lost"] == 0 and figures["offload"]["stored"] == figures["offload"]["accepted"] == 40
    for side in ("bare", "floor", "offload"):
        assert figures[side]["rate"] > 0 and figures[side]["server_cpu_ms_per_request"] > 0, figures
        others = figures[side]["other_cpu_ms_per_request"]
        assert others["load"] > 0 and {"postgres", "rabbitmq"} <= others.keys(), figures
        assert figures["cpu_bound_rate"][side] > 0, figures
