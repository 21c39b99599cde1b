"""Log output as an entrypoint writes it, captured from the root logger for the length of a block."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from offload.logs import log_handler


@contextlib.contextmanager
def captured_logs(*, logger: str, level: int = logging.INFO) -> Iterator[io.StringIO]:
    """The lines `offload.logs.log_handler` writes while the block runs, with `logger` at `level`."""
    stream = io.StringIO()
    handler = log_handler(stream)
    root, source = logging.getLogger(), logging.getLogger(logger)
    previous = source.level
    root.addHandler(handler)
    source.setLevel(level)
    try:
        yield stream
    finally:
        source.setLevel(previous)
        root.removeHandler(handler)
