"""Free TCP ports for processes this package starts (the local stack, tests, benches, the
gloo rendezvous of data-parallel ranks).

Drawn below the kernel's ephemeral range: a port the kernel hands out (bind to 0) is free
one moment and another process's (a client connection, a Dask worker on port 0) the next,
before the service started on it binds; below that range only an explicit bind can take
it."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_floor() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections, bind to 0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    """Whether `port` binds on every address now (so on loopback and the host's own too)."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> int:
    """The first of `n` consecutive ports free now (gateway workers' metrics: port + w)."""
    floor = _ephemeral_floor()
    low = 10000 if floor - n > 10000 else 1024
    while True:
        first = random.randrange(low, max(low + 1, floor - n))
        if all(_bindable(first + w) for w in range(n)):
            return first


def free_port() -> int:
    return free_ports(1)
