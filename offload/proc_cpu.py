"""CPU time of processes on this host, read from Linux /proc: what the benches report per message."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The local servers a bench reports on, by the name their processes have in /proc.
SERVERS = {"postgres": "postgres", "beam.smp": "rabbitmq"}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds process `pid` has used so far."""
    return _ticks(Path(f"/proc/{pid}/stat").read_text()) / os.sysconf("SC_CLK_TCK")


def server_ticks() -> dict[int, tuple[str, int]]:
    """Each live local PostgreSQL and RabbitMQ process: pid -> (server, CPU ticks used so far)."""
    found: dict[int, tuple[str, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            line = stat.read_text()
        except OSError:  # it ended meanwhile
            continue
        server = SERVERS.get(line[line.index("(") + 1 : line.rindex(")")])
        if server is not None:
            found[int(stat.parent.name)] = (server, _ticks(line))
    return found


def server_cpu_s(
    before: Mapping[int, tuple[str, int]], after: Mapping[int, tuple[str, int]]
) -> dict[str, float]:
    """CPU seconds each server used between two `server_ticks()`; a process that ended between is missed."""
    used: dict[str, int] = {}
    for pid, (server, ticks) in after.items():
        used[server] = used.get(server, 0) + ticks - before.get(pid, (server, 0))[1]
    return {server: t / os.sysconf("SC_CLK_TCK") for server, t in used.items()}


def _ticks(stat_line: str) -> int:
    fields = stat_line.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
