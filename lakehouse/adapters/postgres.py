"""libpq connection settings that make a dead or stalled PostgreSQL fail instead of hang.

Without them libpq waits for the TCP stack: minutes to connect to a host that is gone, and
on an open connection whose peer vanished (a failover, a partition) up to the kernel's
retransmission limit, about 15 minutes, while the call holds a pool thread. Settings a URL
sets itself win.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.engine import URL

#: Seconds to establish a connection.
CONNECT_TIMEOUT_SECONDS: Final = 5
#: Connection settings of every PostgreSQL connection: the connect timeout, TCP keepalives
#: (a silent peer is probed after 10 s idle, given up after 3 probes 5 s apart) and
#: ``tcp_user_timeout`` (sent data unacknowledged for 30 s fails the connection).
CONNECTION_DEFAULTS: Final[dict[str, str]] = {
    "connect_timeout": str(CONNECT_TIMEOUT_SECONDS),
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
#: SQLAlchemy drivers over libpq, which take the settings above.
LIBPQ_DRIVERS: Final = frozenset({"psycopg2", "psycopg"})


def is_libpq(url: URL) -> bool:
    """Whether ``url`` reaches PostgreSQL through libpq."""
    return url.get_backend_name() == "postgresql" and url.get_driver_name() in LIBPQ_DRIVERS


def missing_settings(url: URL, *, statement_timeout_ms: int | None = None) -> dict[str, str]:
    """The settings above that ``url`` does not set, plus a ``statement_timeout`` if asked.

    Args:
        url: A libpq URL.
        statement_timeout_ms: Longest a statement may run on the server; only where every
            statement is short (the catalog's), not where one may wait for a lock on purpose.
    """
    missing = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in url.query}
    if statement_timeout_ms is not None and "options" not in url.query:
        missing["options"] = f"-c statement_timeout={statement_timeout_ms}"
    return missing
