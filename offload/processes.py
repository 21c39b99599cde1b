"""`offload scheduler` and `offload dev`: the scheduler process, and every process under one supervisor."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

import click

from offload.settings import REFUSED


def _ctx(click_ctx: click.Context) -> Any:
    from offload.cli import Ctx

    return click_ctx.ensure_object(Ctx)


@click.command()
@click.pass_context
def scheduler(click_ctx: click.Context) -> None:
    """Fire every job at its cron expression, in its own time zone, through the dispatch API.

    Runs until SIGINT or SIGTERM. Any number may run at once: a slot dispatched twice runs once.
    """
    from offload.cli import require_broker
    from scheduling import periodic
    from scheduling.scheduler import Scheduler
    from store import db as store_db

    ctx = _ctx(click_ctx)
    settings = ctx.settings
    if not settings.inline:  # with every job inline the scheduler runs them itself: no broker
        require_broker(settings)
    runtime = ctx.runtime
    store_db.upgrade(runtime.engine)
    for name in ("scheduling", "periodiq"):
        logging.getLogger(name).setLevel(min(logging.INFO, logging.getLogger().level or logging.INFO))
    periodic.run(
        Scheduler(
            registry=runtime.registry,
            dispatcher=runtime.dispatcher,
            history=runtime.ledger,
            grace_s=settings.scheduler_grace_s,
        )
    )
    runtime.close()


@click.command()
@click.option("--no-web", is_flag=True, help="Do not start the web server.")
@click.pass_context
def dev(click_ctx: click.Context, no_web: bool) -> None:
    """Run web, worker and scheduler together, restart any that crashes, stop all on Ctrl-C."""
    from offload.cli import require_broker
    from store import db as store_db

    ctx = _ctx(click_ctx)
    settings = ctx.settings
    require_broker(settings)
    store_db.upgrade(ctx.runtime.engine)
    ctx.runtime.close()
    base = [sys.executable, "-m", "offload"]
    if logging.getLogger().level <= logging.INFO:
        base.append("-v")
    commands = getattr(click_ctx.find_root().command, "commands", {})
    children = [(name, [*base, name]) for name in ("web", "worker", "scheduler") if name in commands]
    if no_web:
        children = [c for c in children if c[0] != "web"]
    sys.exit(Supervisor(children).run())


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float | None = None
    starts: int = 0
    readers: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    """Runs child processes with prefixed output, restarts a crashed one with backoff, stops all cleanly.

    Each child leads a process group of its own, so stopping it also ends whatever it started, and
    Ctrl-C at a terminal reaches the supervisor alone. A child whose first start is refused (exit
    2 before it ran `stable_s`: a setting, a port in use) stops them all: restarting it would only
    say so again. Exit 2 later (the broker gone at a restart, say) is a crash like any other.

    Parameters:
      children: (name, argv) of each child.
      min_backoff_s, max_backoff_s: restart delay after a crash, doubling while the child keeps crashing.
      stable_s: a child that ran this long before exiting restarts after `min_backoff_s` again.
      stop_timeout_s: how long children get to exit after SIGTERM before their groups are SIGKILLed.
    """

    def __init__(
        self,
        children: Sequence[tuple[str, list[str]]],
        *,
        out: IO[str] | None = None,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        stop_timeout_s: float = 20.0,
    ) -> None:
        self.children = [Child(name, argv) for name, argv in children]
        self.out = out or sys.stdout
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.stop_timeout_s = stop_timeout_s
        self.stopping = False
        self.exit_code = 0
        self._lock = threading.Lock()
        self._width = max((len(c.name) for c in self.children), default=3)

    def run(self) -> int:
        """Supervise until SIGINT, SIGTERM or SIGHUP, or a child's first start is refused; returns 0,
        or 2 after a refused start, once every child has stopped.

        The children lead sessions of their own, so a closed terminal's hangup reaches only this
        process, which passes it on as a stop.
        """
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._stop) for sig in stops}
        try:
            for child in self.children:
                self._start(child)
            while not self.stopping:
                self._check()
                time.sleep(0.2)
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.exit_code

    def say(self, name: str, line: str) -> None:
        with self._lock, contextlib.suppress(OSError):  # a closed terminal must not stop a stop
            self.out.write(f"{name:<{self._width}} | {line.rstrip()}\n")
            self.out.flush()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _start(self, child: Child) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            child.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        child.proc, child.started_at, child.restart_at = proc, time.monotonic(), None
        child.starts += 1
        reader = threading.Thread(target=self._pump, args=(child.name, proc), daemon=True)
        reader.start()
        child.readers.append(reader)
        self.say("dev", f"started {child.name} (pid {proc.pid})")

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.say(name, raw.decode(errors="replace"))

    def _check(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at and not self.stopping:
                    self._start(child)
                continue
            assert child.proc is not None
            code = child.proc.poll()
            if code is None:
                continue
            _kill_group(child.proc.pid)
            if code == REFUSED and child.starts == 1 and now - child.started_at < self.stable_s:
                self.say("dev", f"{child.name} refused to start (exit {code}); stopping")
                self.stopping, self.exit_code = True, REFUSED
                return
            if now - child.started_at >= self.stable_s:
                child.backoff_s = self.min_backoff_s
            else:
                child.backoff_s = min(self.max_backoff_s, max(self.min_backoff_s, child.backoff_s * 2))
            child.restart_at = now + child.backoff_s
            self.say("dev", f"{child.name} exited with code {code}; restarting in {child.backoff_s:.1f} s")

    def _stop_all(self) -> None:
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        self.say("dev", f"stopping {', '.join(c.name for c in self.children)}")
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("dev", f"pid {proc.pid} did not stop in {self.stop_timeout_s:.0f} s; killing it")
        for child in self.children:
            if child.proc is not None:
                _kill_group(child.proc.pid)
                child.proc.wait()
            for reader in child.readers:
                reader.join(timeout=2)
        self.say("dev", "stopped")


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in a child's process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
