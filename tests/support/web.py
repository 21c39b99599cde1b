"""`offload web` over the test registry and the recording webhook handlers.

Run as `python -m tests.support.web --port 0`; settings come from the environment like `offload web`.
"""

from __future__ import annotations

import logging
import sys

from offload.settings import Settings
from offload.web import run
from offload.wiring import build
from store import db
from tests.support.jobs import TEST_REGISTRY
from tests.support.webhooks import RECORDING_PORTS

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.load()
    runtime = build(settings, registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    db.upgrade(runtime.engine)
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 0
    run(runtime, host="127.0.0.1", port=port, threads=4)
