"""The object store adapters against a real local folder and moto's S3 server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from fixtures import s3
from fixtures.net import free_port
from lakehouse.adapters.object_store import object_store_for
from lakehouse.config import S3Settings
from lakehouse.core.ports import ObjectStorePort
from lakehouse.domain.errors import InvalidArgument, NotFound, Unavailable


@pytest_asyncio.fixture(params=["local", "s3"])
async def store_and_root(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[ObjectStorePort, str]]:
    if request.param == "local":
        root = (tmp_path / "wh").as_uri()
        store = object_store_for(root, S3Settings())
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        root = f"s3://{bucket}/wh"
        store = object_store_for(root, S3Settings(**s3.s3_settings(endpoint)))
    try:
        yield store, root
    finally:
        await store.close()


async def test_put_get_list_delete_prefix(store_and_root: tuple[ObjectStorePort, str]) -> None:
    store, root = store_and_root
    await store.check()
    for name in ("t1/data/a.parquet", "t1/metadata/v1.json", "t10/data/b.parquet"):
        await store.put(f"{root}/{name}", name.encode())
    assert await store.get(f"{root}/t1/metadata/v1.json") == b"t1/metadata/v1.json"

    listed = [o async for o in store.list_objects(f"{root}/t1/")]
    assert [o.uri.removeprefix(root) for o in listed] == [
        "/t1/data/a.parquet",
        "/t1/metadata/v1.json",
    ]
    assert all(o.size > 0 and o.last_modified_epoch > 0 for o in listed)

    # deleting t1/ leaves t10/ alone: prefixes end with a slash
    assert await store.delete_prefix(f"{root}/t1/") == 2
    assert [o async for o in store.list_objects(f"{root}/t1/")] == []
    assert await store.get(f"{root}/t10/data/b.parquet") == b"t10/data/b.parquet"

    with pytest.raises(NotFound):
        await store.get(f"{root}/t1/data/a.parquet")


async def test_s3_check_fails_for_missing_bucket_and_dead_endpoint(s3_endpoint: str) -> None:
    missing = object_store_for("s3://no-such-bucket/wh", S3Settings(**s3.s3_settings(s3_endpoint)))
    with pytest.raises(Unavailable):
        await missing.check()
    await missing.close()
    dead_settings = S3Settings(
        **{**s3.s3_settings(s3_endpoint), "endpoint_url": f"http://127.0.0.1:{free_port()}"}
    )
    dead = object_store_for("s3://bucket/wh", dead_settings)
    with pytest.raises(Unavailable) as exc:
        await dead.check()
    assert exc.value.reason == "OBJECT_STORE_UNAVAILABLE"
    await dead.close()


def test_unsupported_scheme_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        object_store_for("gs://bucket/wh", S3Settings())
