"""The service's signing key, generated once in the job store's shared database.

Replicas on PostgreSQL share one job store; the first to need the key generates it and every
other one reads the same row (``INSERT ... ON CONFLICT DO NOTHING`` then ``SELECT``, so
replicas starting together agree). The table is created by the job store's migration 5.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from lakehouse.adapters.job_store.store import JobStore
from lakehouse.domain.errors import Unavailable

#: The reason of the ``Unavailable`` raised when the database cannot be reached.
UNAVAILABLE_REASON: Final = "SIGNING_KEY_UNAVAILABLE"

_key_table = Table(
    "lakehouse_signing_key",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("key", String, nullable=False),
    Column("created_us", BigInteger, nullable=False),
)


def shared_signing_key(store: JobStore) -> bytes:
    """The key in the job store's database, generated there by the first caller.

    Blocking: run it in a thread pool, after the job store's ``migrate``.

    Raises:
        Unavailable: The database cannot be reached (reason ``SIGNING_KEY_UNAVAILABLE``);
            the message never holds the key.
    """
    dialect = postgresql if store.shared else sqlite
    candidate = secrets.token_hex(32)
    insert = dialect.insert(_key_table).values(
        id=1, key=candidate, created_us=time.time_ns() // 1000
    )
    try:
        with store.writing() as conn:
            conn.execute(insert.on_conflict_do_nothing(index_elements=["id"]))
            key = conn.execute(select(_key_table.c.key).where(_key_table.c.id == 1)).scalar_one()
    except (Unavailable, SQLAlchemyError) as exc:
        detail = exc.message if isinstance(exc, Unavailable) else type(exc).__name__
        raise Unavailable(
            f"the signing key cannot be read from the job store: {detail}",
            reason=UNAVAILABLE_REASON,
        ) from None
    return str(key).encode()
