"""Listening ports another process already holds: found before binding, told in one line.

gRPC's core reports a taken port as a log line of its own and a ``RuntimeError`` that names
neither the port's setting nor the cause; aiohttp as a bare ``OSError``. A newcomer whose
second ``make run`` collides with the first should read which port and how to choose another.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from typing import Final

#: How each port is named in the message: what it serves and the setting that moves it.
GRPC_PORT: Final = {"what": "gRPC", "setting": "LAKEHOUSE_GRPC_PORT or --grpc-port"}
HTTP_PORT: Final = {"what": "sidecar HTTP", "setting": "LAKEHOUSE_HTTP_PORT or --http-port"}
FLIGHT_PORT: Final = {"what": "Arrow Flight", "setting": "LAKEHOUSE_FLIGHT_PORT or --flight-port"}


class PortInUse(OSError):
    """A port the process must listen on is held by another process.

    A configuration problem: the operator picks another port or stops the other process.
    """

    def __init__(self, what: str, host: str, port: int, setting: str) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"the {what} port {port} on {host or '*'} is in use by another process; "
            f"stop it, or choose another port with {setting}",
        )

    def __str__(self) -> str:
        return str(self.strerror)


def check_free(host: str, port: int, *, what: str, setting: str) -> None:
    """Raises PortInUse when ``host:port`` cannot be bound because something listens there.

    Binds and releases a probe socket as the server will bind (``SO_REUSEADDR``, no
    ``SO_REUSEPORT``), so a port left in TIME_WAIT by an earlier run counts as free. Port 0
    (any free port) and addresses that do not resolve pass: the real bind reports those.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(what, host, port, setting) from None
                raise


@contextlib.contextmanager
def binding(host: str, port: int, *, what: str, setting: str) -> Iterator[None]:
    """Turns an "address in use" from the real bind into PortInUse.

    Another process may have taken the port since ``check_free``.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(what, host, port, setting) from exc
        raise
