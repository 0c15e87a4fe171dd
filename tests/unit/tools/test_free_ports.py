"""Ports for the local stack and the tests: consecutive, free, and below the kernel's
ephemeral range, so a client connection or a port-0 bind elsewhere cannot take one before
the service binds it."""

from __future__ import annotations

import socket

from shortlist import ports
from shortlist.ports import _ephemeral_floor, free_ports


def test_free_ports_are_consecutive_bindable_and_below_the_ephemeral_range():
    floor = _ephemeral_floor()
    for n in (1, 3):
        first = free_ports(n)
        assert first >= 1024 and first + n <= floor
        held = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))  # raises if any of them was not free
                held.append(s)
        finally:
            for s in held:
                s.close()


def test_a_port_someone_holds_is_skipped(monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", free_ports(1)))
    try:
        port = taken.getsockname()[1]
        draws = iter([port, port + 1])  # the held one first: it must be passed over
        monkeypatch.setattr(ports.random, "randrange", lambda *_: next(draws))
        assert free_ports(1) == port + 1
    finally:
        taken.close()
