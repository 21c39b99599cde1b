"""Liveness (`/healthz`) and readiness (`/readyz`: the database and the broker answer)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import falcon

from ingress.errors import NotReady

#: name -> a check that raises when its dependency cannot be reached.
Probes = Mapping[str, Callable[[], None]]


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    """200 when every probe passes; 503 naming each one that failed."""

    def __init__(self, *, probes: Probes) -> None:
        self.probes = probes

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks: dict[str, str] = {}
        for name, probe in self.probes.items():
            try:
                probe()
            except Exception as e:
                checks[name] = f"unreachable: {type(e).__name__}: {e}"[:300]
            else:
                checks[name] = "ok"
        failed = [name for name, state in checks.items() if state != "ok"]
        if failed:
            raise NotReady(f"not ready: {', '.join(failed)} unreachable", details={"checks": checks})
        resp.media = {"status": "ready", "checks": checks}
