"""ObjectStorePort: one behaviour suite, run on every real implementation.

``[local]`` is ``LocalObjectStore`` on a folder under tmp_path; ``[s3]`` is ``S3ObjectStore``
on moto's S3 server (a real HTTP endpoint on 127.0.0.1) and a fresh bucket. Both are built the
way the wiring builds them (``object_store_for``). The tests use the port's methods only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from fixtures import s3
from fixtures.ports import protocol_mismatches
from lakehouse.adapters.object_store import LocalObjectStore, S3ObjectStore, object_store_for
from lakehouse.config import S3Settings
from lakehouse.core.ports import ObjectStorePort
from lakehouse.domain.errors import NotFound, Unavailable

IMPLEMENTATIONS = [LocalObjectStore, S3ObjectStore]


@dataclass
class Store:
    """A store under test and the root (a warehouse location) its objects go under."""

    port: ObjectStorePort
    root: str

    def uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    async def names(self, prefix: str) -> list[str]:
        """The listed objects under ``root/prefix``, relative to the root, sorted."""
        listed = [o.uri async for o in self.port.list_objects(self.uri(prefix))]
        return sorted(u.removeprefix(self.root + "/") for u in listed)


@pytest_asyncio.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "local":
        root = (tmp_path / "wh").as_uri()
        port: ObjectStorePort = object_store_for(root, S3Settings())
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        root = f"s3://{bucket}/wh"
        port = object_store_for(root, S3Settings(**s3.s3_settings(endpoint)))
    try:
        yield Store(port, root)
    finally:
        await port.close()


@pytest_asyncio.fixture(params=["local", "s3"])
async def unusable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A store whose location cannot hold objects: a folder below a file; a missing bucket."""
    if request.param == "local":
        (tmp_path / "a-file").write_bytes(b"not a folder")
        root = (tmp_path / "a-file" / "wh").as_uri()
        port: ObjectStorePort = object_store_for(root, S3Settings())
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        root = "s3://no-such-bucket-for-this-test/wh"
        port = object_store_for(root, S3Settings(**s3.s3_settings(endpoint)))
    try:
        yield Store(port, root)
    finally:
        await port.close()


# -- conformance -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_the_implementation_has_every_method_of_the_port(cls: type) -> None:
    assert protocol_mismatches(ObjectStorePort, cls) == []


def _statically_conforms(local: LocalObjectStore, remote: S3ObjectStore) -> list[ObjectStorePort]:
    """Never called: mypy checks that each implementation is assignable to the port."""
    return [local, remote]


# -- behaviour ---------------------------------------------------------------------------------


async def test_put_get_list_delete_prefix(store: Store) -> None:
    # Moved from tests/adapters/test_object_store.py (unchanged in what it asserts).
    port, root = store.port, store.root
    await port.check()
    for name in ("t1/data/a.parquet", "t1/metadata/v1.json", "t10/data/b.parquet"):
        await port.put(f"{root}/{name}", name.encode())
    assert await port.get(f"{root}/t1/metadata/v1.json") == b"t1/metadata/v1.json"

    listed = [o async for o in port.list_objects(f"{root}/t1/")]
    assert [o.uri.removeprefix(root) for o in listed] == [
        "/t1/data/a.parquet",
        "/t1/metadata/v1.json",
    ]
    assert all(o.size > 0 and o.last_modified_epoch > 0 for o in listed)

    # deleting t1/ leaves t10/ alone: prefixes end with a slash
    assert await port.delete_prefix(f"{root}/t1/") == 2
    assert [o async for o in port.list_objects(f"{root}/t1/")] == []
    assert await port.get(f"{root}/t10/data/b.parquet") == b"t10/data/b.parquet"

    with pytest.raises(NotFound):
        await port.get(f"{root}/t1/data/a.parquet")


async def test_check_passes_on_a_usable_location(store: Store) -> None:
    await store.port.check()
    await store.port.check()  # and again: it changes nothing


async def test_check_fails_on_an_unusable_location(unusable: Store) -> None:
    with pytest.raises(Unavailable) as err:
        await unusable.port.check()
    assert err.value.reason == "OBJECT_STORE_UNAVAILABLE"


async def test_put_replaces_an_object_and_size_is_its_length(store: Store) -> None:
    await store.port.put(store.uri("t/a.bin"), b"first version")
    await store.port.put(store.uri("t/a.bin"), b"v2")  # a retried or newer write

    assert await store.port.get(store.uri("t/a.bin")) == b"v2"
    (info,) = [o async for o in store.port.list_objects(store.uri("t/"))]
    assert info.size == 2


async def test_empty_and_binary_objects_round_trip(store: Store) -> None:
    data = bytes(range(256)) * 64
    await store.port.put(store.uri("t/empty"), b"")
    await store.port.put(store.uri("t/binary"), data)

    assert await store.port.get(store.uri("t/empty")) == b""
    assert await store.port.get(store.uri("t/binary")) == data
    sizes = {o.uri.rsplit("/", 1)[1]: o.size async for o in store.port.list_objects(store.root)}
    assert sizes == {"empty": 0, "binary": len(data)}


async def test_a_missing_object_is_not_found_with_its_reason(store: Store) -> None:
    with pytest.raises(NotFound) as err:
        await store.port.get(store.uri("never/written.parquet"))
    assert err.value.reason == "OBJECT_NOT_FOUND"


async def test_a_prefix_that_only_holds_other_objects_is_not_an_object(store: Store) -> None:
    # A "folder" exists on disk but not in S3: for a caller of the port neither is an object.
    await store.port.put(store.uri("t/data/a.parquet"), b"a")
    for name in ("t/data", "t/data/", "t", "t/data/a.parquet/below"):
        with pytest.raises(NotFound) as err:
            await store.port.get(store.uri(name))
        assert err.value.reason == "OBJECT_NOT_FOUND"


async def test_list_matches_a_string_prefix_not_only_a_folder(store: Store) -> None:
    for name in ("t1/a", "t10/b", "t2/c", "t1.txt"):
        await store.port.put(store.uri(name), b"x")

    assert await store.names("t1") == ["t1.txt", "t1/a", "t10/b"]
    assert await store.names("t1/") == ["t1/a"]
    assert await store.names("t3") == []
    assert await store.names("") == ["t1.txt", "t1/a", "t10/b", "t2/c"]


async def test_list_is_in_key_order(store: Store) -> None:
    # Byte order of the key, as S3 lists: "-" (0x2d) and "." (0x2e) sort before "/" (0x2f).
    for name in ("t/a/b", "t/a-c", "t/a0", "t/a.txt", "t/B", "t/a/a"):
        await store.port.put(store.uri(name), b"x")

    listed = [
        o.uri.removeprefix(store.root + "/") async for o in store.port.list_objects(store.uri("t/"))
    ]

    assert listed == ["t/B", "t/a-c", "t/a.txt", "t/a/a", "t/a/b", "t/a0"]


async def test_every_listed_uri_reads_back(store: Store) -> None:
    names = ("t/data/part-0.parquet", "t/data/a b=1/part 1.parquet", "t/metadata/v1.json")
    for name in names:
        await store.port.put(store.uri(name), name.encode())

    listed = [o async for o in store.port.list_objects(store.uri("t/"))]

    assert len(listed) == len(names)
    assert sorted([await store.port.get(o.uri) for o in listed]) == sorted(
        n.encode() for n in names
    )
    assert all(o.uri.startswith(store.root.split("://")[0] + "://") for o in listed)


async def test_list_of_nothing_is_empty(store: Store) -> None:
    assert [o async for o in store.port.list_objects(store.uri("nothing/"))] == []
    assert [o async for o in store.port.list_objects(store.root + "/")] == []


async def test_delete_prefix_counts_what_it_deleted_and_leaves_the_rest(store: Store) -> None:
    for name in ("t/data/a", "t/data/b", "t/data/nested/c", "t/metadata/v1.json", "u/data/a"):
        await store.port.put(store.uri(name), b"x")

    assert await store.port.delete_prefix(store.uri("t/data/")) == 3
    assert await store.names("") == ["t/metadata/v1.json", "u/data/a"]
    # Deleting again, or deleting what never existed, deletes nothing and is no error.
    assert await store.port.delete_prefix(store.uri("t/data/")) == 0
    assert await store.port.delete_prefix(store.uri("never/")) == 0
    # A deleted prefix can be written again.
    await store.port.put(store.uri("t/data/a"), b"again")
    assert await store.port.get(store.uri("t/data/a")) == b"again"


async def test_close_twice_is_harmless(store: Store) -> None:
    await store.port.put(store.uri("a"), b"x")
    await store.port.close()
    await store.port.close()
