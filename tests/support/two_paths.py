"""`python -m tests.support.two_paths URL`: a statement through each of the store's two paths, twice.

A thread per path, one after the other, runs `SELECT 1` through `Direct` (the hot statements) or
through the engine's pool (everything else), each on a connection of its own. Then this prints
`ready` and waits for a line on stdin; then both threads run their statement again, on the
connection they hold, and each prints a JSON line with the error it raised (or null) and how long
it took.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable

from sqlalchemy import text

from store import db
from store.db import Direct, PgStatement

ONE = PgStatement("SELECT 1")


def main(url: str) -> None:
    engine = db.make_engine(url)
    direct = Direct(engine)

    def through_pool() -> None:
        with db.translate_errors(), engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    paths: dict[str, Callable[[], object]] = {"direct": lambda: direct.run(ONE, {}), "pool": through_pool}
    connected, go = threading.Semaphore(0), threading.Event()

    def twice(name: str) -> None:
        paths[name]()
        connected.release()
        go.wait()
        started, error = time.monotonic(), None
        try:
            paths[name]()
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        print(json.dumps({"path": name, "error": error, "s": time.monotonic() - started}), flush=True)

    threads = [threading.Thread(target=twice, args=(name,)) for name in paths]
    for thread in threads:  # one at a time: Direct would take the pool's connection as its own
        thread.start()
        connected.acquire()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1])
