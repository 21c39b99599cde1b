"""A network namespace joined to this host by a veth pair: a host whose cable a test can pull."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from typing import Any

import pytest


class Island:
    """Namespace `name`, reached from here at `peer_ip`; it reaches this host at `host_ip`.

    `pull_cable()` takes this host's end of the pair down: from then on every packet either way is
    dropped without an answer, as when a cable is pulled or a host vanishes, so nothing closes the
    connections across it.
    """

    def __init__(self) -> None:
        self.name = f"ofl{uuid.uuid4().hex[:8]}"
        self._host_end = f"{self.name}h"  # interface names have at most 15 characters
        net = f"10.213.{random.randrange(256)}.{4 * random.randrange(64)}"
        base = net.rsplit(".", 1)
        self.host_ip = f"{base[0]}.{int(base[1]) + 1}"
        self.peer_ip = f"{base[0]}.{int(base[1]) + 2}"

    def create(self) -> None:
        peer_end = f"{self.name}n"
        _ip("netns", "add", self.name)
        _ip("link", "add", self._host_end, "type", "veth", "peer", "name", peer_end)
        _ip("link", "set", peer_end, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self._host_end)
        _ip("link", "set", self._host_end, "up")
        _ip("-n", self.name, "addr", "add", f"{self.peer_ip}/30", "dev", peer_end)
        _ip("-n", self.name, "link", "set", peer_end, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        """`args` run inside the namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], text=True, **kwargs)

    def pull_cable(self) -> None:
        _ip("link", "set", self._host_end, "down")

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self._host_end], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


def require_islands() -> None:
    """Network namespaces need root and iproute2: CI has both, so there their absence fails the test."""
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    why = "network namespaces need root and iproute2's `ip`"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI runs as root", pytrace=False)
    pytest.skip(why)
