"""Throwaway servers and workspaces on this machine, for the demo, the tests and the benchmarks.

Does: start real servers nobody here wrote — a SCIM 2.0 application (``scim``: the
``scim2-server`` package), OpenLDAP (``slapd``), RabbitMQ with its management API
(``rabbitmq``) — on free loopback ports, each in a temporary directory and stopped with it; make
scratch workspaces and sample employees (``workspaces``). ``free_port`` is what they share.
Does not: run anything in production (real targets are the customer's applications), touch the
machine's own services, or install packages: a missing server says how to install it.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
