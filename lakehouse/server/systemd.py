"""systemd's readiness protocol (``sd_notify``), spoken directly over its datagram socket.

``Type=notify`` units learn that a service is up from a ``READY=1`` datagram sent to the unix
socket named by ``$NOTIFY_SOCKET``, and that it is shutting down from ``STOPPING=1``. The
protocol is a few ``KEY=VALUE`` lines in one datagram, so it is spoken here with the standard
library rather than through libsystemd (a C dependency) or the ``systemd`` Python package
(which needs libsystemd headers to build). Outside systemd (a container, a terminal, tests)
``$NOTIFY_SOCKET`` is unset and every call is a no-op.

Notification is best effort by design: a lost ``READY=1`` makes systemd time the start out and
restart the service, which is visible and recoverable, whereas an exception here would take
down a server that is otherwise fine. Failures are therefore logged once and swallowed.

Secrets that systemd passes with ``LoadCredential=`` are read by :mod:`lakehouse.config`
(``$CREDENTIALS_DIRECTORY``), since configuration is read in exactly one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

#: A send must never stall the event loop for long: the manager reads its socket promptly,
#: and a full queue means it is overloaded, in which case dropping one message is better.
_SEND_TIMEOUT_SECONDS = 1.0


class Notifier:
    """Sends state changes to the service manager; a no-op without a notify socket.

    Attributes:
        address: The notify socket as given in ``$NOTIFY_SOCKET`` (``/run/...`` or, for the
            abstract namespace, ``@name``), or None when not run by a service manager.
        watchdog_seconds: The manager's watchdog timeout (``WatchdogSec=``), or None when the
            watchdog is off or meant for another process.
    """

    def __init__(self, address: str | None, watchdog_seconds: float | None = None) -> None:
        self.address = address or None
        self.watchdog_seconds = watchdog_seconds if watchdog_seconds else None
        self._failed = False

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        """The notifier systemd set up for this process.

        Args:
            environ: The process environment (default ``os.environ``).
            pid: This process's id (default ``os.getpid()``); ``$WATCHDOG_PID``, when set, names
                the one process the watchdog applies to.

        Returns:
            A notifier; without ``$NOTIFY_SOCKET`` it does nothing.
        """
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        return cls(env.get(NOTIFY_SOCKET_ENV), _watchdog_seconds(env, pid))

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Sends one datagram of ``KEY=VALUE`` lines, e.g. ``notify(READY=1, STATUS="up")``.

        Returns:
            Whether the message was sent; False without a notify socket or when sending failed
            (logged once per notifier, never raised: see the module docstring).
        """
        if self.address is None:
            return False
        message = "".join(f"{key}={value}\n" for key, value in fields.items())
        try:
            target = _socket_address(self.address)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT_SECONDS)
                sock.connect(target)
                sock.sendall(message.encode())
        except (OSError, ValueError) as exc:
            if not self._failed:
                self._failed = True
                log.warning(
                    "cannot notify the service manager",
                    extra={"notify_socket": self.address, "error": str(exc)},
                )
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tells the manager start-up is complete; ``status`` shows in ``systemctl status``."""
        return self.notify(READY=1, STATUS=status)

    def stopping(self, status: str) -> bool:
        """Tells the manager a graceful shutdown has begun (so it waits for TimeoutStopSec)."""
        return self.notify(STOPPING=1, STATUS=status)

    def status(self, status: str) -> bool:
        """Updates the free-form status line shown by ``systemctl status``."""
        return self.notify(STATUS=status)

    @contextlib.asynccontextmanager
    async def watchdog(self) -> AsyncIterator[None]:
        """Pings the watchdog (``WATCHDOG=1``) from the event loop while the block runs.

        The pings come from a task on the event loop, so they stop when the loop is stuck:
        that is exactly the hang ``WatchdogSec=`` exists to catch (blocking work belongs in
        threads). They are sent at half the timeout, as sd_watchdog_enabled(3) advises, so one
        late wake-up does not cost a restart.
        """
        if self.address is None or self.watchdog_seconds is None:
            yield
            return
        task = asyncio.create_task(self._ping(self.watchdog_seconds / 2), name="sd-watchdog")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _ping(self, interval: float) -> None:
        while True:
            self.notify(WATCHDOG=1)
            await asyncio.sleep(interval)


def _watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout meant for ``pid``, as sd_watchdog_enabled(3) reads it."""
    raw = environ.get(WATCHDOG_USEC_ENV, "")
    owner = environ.get(WATCHDOG_PID_ENV, "")
    try:
        usec = int(raw)
        if owner and int(owner) != pid:
            return None
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def _socket_address(address: str) -> str | bytes:
    """The ``connect`` address for ``$NOTIFY_SOCKET``.

    A path, or ``@name`` in Linux's abstract namespace, which is a leading NUL on the wire.

    Raises:
        ValueError: Neither form (e.g. systemd's newer ``vsock:`` addresses, unsupported here).
    """
    if address.startswith("/"):
        return address
    if address.startswith("@") and len(address) > 1:
        return b"\0" + address[1:].encode()
    raise ValueError(f"unsupported notify socket address {address!r}")
