"""Ports picked for processes started later: free, and never an outgoing connection's."""

from __future__ import annotations

import random
import socket

import pytest

from deploy.local import servers
from deploy.local.servers import ephemeral_ports, free_port


def test_a_picked_port_is_free_and_below_the_ephemeral_range() -> None:
    low, _ = ephemeral_ports()
    ports = {free_port() for _ in range(50)}
    assert all(port < low for port in ports), sorted(ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_is_never_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ports picked one after another, none bound yet, all differ (the dev stack's gateway
    and telemetry once got the same port and one of them could not start)."""
    first, second = free_port(), free_port()  # free now, and handed out by no earlier test
    monkeypatch.setattr(servers, "_handed_out", set())
    picks = iter([first, first, first, second])
    monkeypatch.setattr(random, "randint", lambda low, high: next(picks))
    assert [free_port(), free_port()] == [first, second]
