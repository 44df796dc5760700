"""Client helpers for the lakehouse.v1 API, shipped with the generated stubs.

``Lakehouse`` (sync) and ``AsyncLakehouse`` (asyncio) are the high-level clients: tables from
pyarrow schemas, retry-safe writes, exactly-once appends, reads and SQL jobs into pyarrow,
decoded errors, retries the way the service's ``RetryInfo`` says. Underneath them:
``lakehouse.client.errors`` decodes any failed call (``decode_error``) and needs no pyarrow;
``lakehouse.client.schema`` converts ``pyarrow.Schema`` ⇄ ``lakehouse.v1.Schema``;
``lakehouse.client.jobs`` shows jobs with enum names and a SQL preview as a table;
``lakehouse.client.arrow`` turns ``ReadRows`` streams into pyarrow tables and Arrow tables into
ingest requests; ``lakehouse.client.changes`` builds change streams (CDC) for UPSERT writes.
All but ``errors`` and ``retry`` need pyarrow (``pip install './gen[arrow]'``); importing this
package alone does not: ``Lakehouse`` and ``AsyncLakehouse`` are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lakehouse.client.high_level import Lakehouse
    from lakehouse.client.high_level_async import AsyncLakehouse

__all__ = ["AsyncLakehouse", "Lakehouse"]


def __getattr__(name: str) -> Any:
    # PEP 562: the high-level clients need pyarrow; import them only when asked for.
    if name == "Lakehouse":
        from lakehouse.client.high_level import Lakehouse

        return Lakehouse
    if name == "AsyncLakehouse":
        from lakehouse.client.high_level_async import AsyncLakehouse

        return AsyncLakehouse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
