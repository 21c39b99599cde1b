"""The module `offload worker` hands to the Dramatiq CLI: builds the runtime in each worker process."""

from __future__ import annotations

import logging

from offload.logs import configure_logging
from offload.settings import Settings
from offload.wiring import build

# The Dramatiq CLI configured logging (and its level, from its -v) before importing this module.
configure_logging(level=logging.getLogger().level, replace=True)
logging.getLogger("alembic").setLevel(logging.WARNING)

runtime = build(Settings.load(), worker=True)
broker = runtime.broker
