"""Worker entry for tests: the production wiring plus the test jobs.

Run as `python -m dramatiq tests.support.app:broker`.
"""

from __future__ import annotations

import logging

from offload.settings import Settings
from offload.wiring import build
from tests.support import domain_hooks
from tests.support.jobs import TEST_PORTS, TEST_REGISTRY

logging.getLogger("pika").setLevel(logging.WARNING)

runtime = build(Settings.load(), registry=TEST_REGISTRY, ports=TEST_PORTS)
domain_hooks.install(runtime)
broker = runtime.broker
