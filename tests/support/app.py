"""Worker entry for tests: the production wiring plus the test jobs.

Run as `python -m dramatiq tests.support.app:broker`. With OFFLOAD_TEST_WEBHOOK_HANDLERS=record the
webhook drain uses the recording test handlers.
"""

from __future__ import annotations

import logging
import os

from offload.logs import configure_logging
from offload.settings import Settings
from offload.wiring import build
from tests.support import domain_hooks
from tests.support.jobs import TEST_PORTS, TEST_REGISTRY

configure_logging(level=logging.getLogger().level, replace=True)

ports = TEST_PORTS
if os.environ.get("OFFLOAD_TEST_WEBHOOK_HANDLERS") == "record":
    from tests.support.webhooks import RECORDING_PORTS

    ports = RECORDING_PORTS

runtime = build(Settings.load(), registry=TEST_REGISTRY, ports=ports, worker=True)
domain_hooks.install(runtime)
broker = runtime.broker
