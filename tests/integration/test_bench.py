"""`offload bench pipeline` keeps working: both sides drain, and the guarded side's ledger is checked."""

from __future__ import annotations

import re
import subprocess
import sys

from offload.settings import Settings
from tests.support.procs import ROOT, env_for


def test_the_pipeline_benchmark_drains_both_sides_and_prints_their_ratio(settings: Settings) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "offload", "bench", "pipeline", "--messages", "40", "--threads", "4"],
        cwd=ROOT,
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rates = re.findall(r"no-op:\s+(\d+) msg/s .* cpu\s+(\d+) us/msg", out.stdout)
    assert len(rates) == 2 and all(int(rate) > 0 and int(cpu) > 0 for rate, cpu in rates), out.stdout
    assert re.search(r"ratio guarded/bare:\s+\d+\.\d\d", out.stdout), out.stdout
