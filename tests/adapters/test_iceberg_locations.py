"""Where a location lies, as RegisterTable sees it: spellings that only look inside the
warehouse are refused before anything is read; ones that are inside get as far as the file.

tests/hardening/test_register_confinement.py covers real tables outside the warehouse; these
are the spellings of a metadata location (``..``, ``.``, queries, fragments, hosts, schemes)
on each backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import pytest

from fixtures.grpc_errors import rpc_error_details
from lakehouse.v1 import table_service_pb2 as pb

if TYPE_CHECKING:
    from lakehouse.config import Settings

METADATA = "metadata/00001-x.metadata.json"
OUTSIDE = "LOCATION_OUTSIDE_WAREHOUSE"
#: The reason of a location refused for its shape, before where it lies is looked at.
UNREADABLE = "INVALID_ARGUMENT"


def hostile_locations(warehouse: str) -> dict[str, tuple[str, str]]:
    """Metadata locations that start like the warehouse but do not lie inside it (or cannot
    be placed at all): what is wrong with each -> (location, the reason it is refused with)."""
    wh = warehouse.rstrip("/")
    scheme, _, rest = wh.partition("://")
    locations = {
        "parent segments": (f"{wh}/h/../../escaped/{METADATA}", OUTSIDE),
        "a query": (f"{wh}/h/t?v=1/{METADATA}", UNREADABLE),
        "a fragment": (f"{wh}/h/t#part/{METADATA}", UNREADABLE),
        "another scheme": (f"ftp://{rest}/h/t/{METADATA}", UNREADABLE),
        "a relative path": (f"h/t/{METADATA}", UNREADABLE),
        "not a URL": (f"{scheme}://[{rest}/h/t/{METADATA}", UNREADABLE),
    }
    if scheme == "s3":
        _, _, key = rest.partition("/")
        locations["a dot segment"] = (f"{wh}/./h/t/{METADATA}", OUTSIDE)
        locations["no bucket"] = (f"s3:///{key}/h/t/{METADATA}", UNREADABLE)
    else:
        locations["another host"] = (f"file://elsewhere{rest}/h/t/{METADATA}", OUTSIDE)
    return locations


async def register(table_stub: Any, metadata_location: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RegisterTable(
            pb.RegisterTableRequest(namespace="h", table="t", metadata_location=metadata_location)
        )
    return exc.value


async def test_spellings_outside_the_warehouse_are_refused(
    table_stub: Any, backend: Settings
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    for what, (location, reason) in hostile_locations(backend.warehouse).items():
        details = rpc_error_details(await register(table_stub, location))
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (what, details.message)
        assert details.reason == reason, (what, details.message)
        assert details.violated_fields == ["metadata_location"], what
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="h"))
    assert list(listed.tables) == []


async def test_spellings_inside_the_warehouse_get_to_the_file(
    table_stub: Any, backend: Settings
) -> None:
    # Inside the warehouse however spelled: not refused for where it lies, only missing.
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    wh = backend.warehouse.rstrip("/")
    scheme, _, rest = wh.partition("://")
    inside = [f"{wh}/h/t/{METADATA}"]
    if scheme != "s3":  # S3 keeps `..` literally: refused there (above)
        inside.append(f"{wh}/h/other/../t/{METADATA}")  # resolved as the disk would
        inside.append(f"{rest}/h/t/{METADATA}")  # a plain absolute path
    for location in inside:
        err = await register(table_stub, location)
        assert err.code() == grpc.StatusCode.NOT_FOUND, (location, err.details())
