"""The object store port and its adapters: S3-compatible (aioboto3) and local folders.

Locations are URIs: ``s3://bucket/key`` or ``file:///path``. The S3 adapter uses only the
S3 API that every S3-compatible store implements (MinIO, Ceph, AWS), with path-style
addressing when configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from lakehouse.config import S3Settings
from lakehouse.errors import InvalidArgument, NotFound, Unavailable

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

_DELETE_BATCH = 1000  # the S3 DeleteObjects maximum


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object."""

    uri: str
    size: int
    last_modified_epoch: float


class ObjectStore(Protocol):
    """What the core needs from object storage (shaped like pyiceberg's FileIO, but async)."""

    async def check(self) -> None:
        """Raises Unavailable if the store cannot be reached or the location is unusable."""

    def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Lists the objects whose URI starts with ``prefix``."""

    async def get(self, uri: str) -> bytes:
        """Reads one object. Raises NotFound if it does not exist."""

    async def put(self, uri: str, data: bytes) -> None:
        """Writes one object, replacing any previous one."""

    async def delete_prefix(self, prefix: str) -> int:
        """Deletes every object under ``prefix``; returns how many were deleted."""

    async def close(self) -> None:
        """Releases connections."""


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme not in {"s3", "s3a"} or not parsed.netloc:
        raise InvalidArgument(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


class S3ObjectStore:
    """Object store over any S3-compatible endpoint, with one shared aioboto3 client."""

    def __init__(self, settings: S3Settings, location: str) -> None:
        self._settings = settings
        self._bucket, self._prefix = _split_s3(location)
        self._client: S3Client | None = None
        self._client_cm: Any = None
        self._lock = asyncio.Lock()

    async def _s3(self) -> S3Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                s = self._settings
                session = aioboto3.Session()
                self._client_cm = session.client(
                    "s3",
                    endpoint_url=s.endpoint_url,
                    region_name=s.region,
                    aws_access_key_id=(
                        s.access_key_id.get_secret_value() if s.access_key_id else None
                    ),
                    aws_secret_access_key=(
                        s.secret_access_key.get_secret_value() if s.secret_access_key else None
                    ),
                    config=AioConfig(
                        s3={"addressing_style": "path" if s.use_path_style else "auto"},
                        connect_timeout=s.connect_timeout_seconds,
                        read_timeout=max(30.0, s.connect_timeout_seconds),
                        retries={"max_attempts": 3, "mode": "standard"},
                    ),
                )
                self._client = await self._client_cm.__aenter__()
        assert self._client is not None
        return self._client

    async def check(self) -> None:
        """Raises Unavailable unless the warehouse bucket answers HeadBucket."""
        try:
            await (await self._s3()).head_bucket(Bucket=self._bucket)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise Unavailable(
                f"object store: bucket {self._bucket!r} is not reachable: {_brief(exc)}",
                reason="OBJECT_STORE_UNAVAILABLE",
            ) from exc

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Lists objects under an ``s3://`` prefix, page by page."""
        bucket, key_prefix = _split_s3(prefix)
        client = await self._s3()
        paginator = client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        uri=f"s3://{bucket}/{obj['Key']}",
                        size=int(obj.get("Size", 0)),
                        last_modified_epoch=obj["LastModified"].timestamp(),
                    )
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _translate(exc, prefix) from exc

    async def get(self, uri: str) -> bytes:
        """Reads one object."""
        bucket, key = _split_s3(uri)
        try:
            response = await (await self._s3()).get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _translate(exc, uri) from exc

    async def put(self, uri: str, data: bytes) -> None:
        """Writes one object."""
        bucket, key = _split_s3(uri)
        try:
            await (await self._s3()).put_object(Bucket=bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _translate(exc, uri) from exc

    async def delete_prefix(self, prefix: str) -> int:
        """Deletes all objects under a prefix, 1,000 per request."""
        bucket, _ = _split_s3(prefix)
        client = await self._s3()
        deleted = 0
        batch: list[str] = []
        try:
            async for obj in self.list_objects(prefix):
                batch.append(_split_s3(obj.uri)[1])
                if len(batch) == _DELETE_BATCH:
                    deleted += await self._delete_batch(client, bucket, batch)
                    batch = []
            if batch:
                deleted += await self._delete_batch(client, bucket, batch)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _translate(exc, prefix) from exc
        return deleted

    @staticmethod
    async def _delete_batch(client: S3Client, bucket: str, keys: list[str]) -> int:
        response = await client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )
        errors = response.get("Errors", [])
        if errors:
            raise Unavailable(
                f"object store: {len(errors)} objects could not be deleted "
                f"(first: {errors[0].get('Key')}: {errors[0].get('Message')})",
                reason="OBJECT_STORE_UNAVAILABLE",
            )
        return len(keys)

    async def close(self) -> None:
        """Closes the shared client."""
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
            self._client = None
            self._client_cm = None


def _brief(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _translate(exc: BaseException, uri: str) -> Exception:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return NotFound(f"object {uri} does not exist", reason="OBJECT_NOT_FOUND")
        if code == "NoSuchBucket":
            return NotFound(f"bucket of {uri} does not exist", reason="BUCKET_NOT_FOUND")
    return Unavailable(f"object store: {_brief(exc)}", reason="OBJECT_STORE_UNAVAILABLE")


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in {"file", ""}:
        raise InvalidArgument(f"not a file:// URI: {uri!r}")
    return Path(unquote(parsed.path))


class LocalObjectStore:
    """Object store over a local folder (the embedded default's warehouse)."""

    def __init__(self, location: str) -> None:
        self._root = _local_path(location)

    async def check(self) -> None:
        """Raises Unavailable unless the warehouse folder exists (or can be made), writable."""

        def probe() -> None:
            self._root.mkdir(parents=True, exist_ok=True)
            if not os.access(self._root, os.W_OK):
                raise PermissionError(f"{self._root} is not writable")

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise Unavailable(
                f"warehouse folder unusable: {exc}", reason="OBJECT_STORE_UNAVAILABLE"
            ) from exc

    @staticmethod
    def _matching(prefix: str) -> list[Path]:
        """Files whose path starts with ``prefix`` (string prefix, as in S3)."""
        wanted = unquote(urlparse(prefix).path)
        root = Path(wanted if wanted.endswith("/") else os.path.dirname(wanted))
        if not root.is_dir():
            return []
        found = []
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                if str(path).startswith(wanted):
                    found.append(path)
        return sorted(found)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Lists files whose path starts with a ``file://`` prefix."""

        def walk() -> list[ObjectInfo]:
            infos = []
            for path in self._matching(prefix):
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    st = path.stat()
                    infos.append(ObjectInfo(path.as_uri(), st.st_size, st.st_mtime))
            return infos

        for info in await asyncio.to_thread(walk):
            yield info

    async def get(self, uri: str) -> bytes:
        """Reads one file."""
        try:
            return await asyncio.to_thread(_local_path(uri).read_bytes)
        except FileNotFoundError as exc:
            raise NotFound(f"object {uri} does not exist", reason="OBJECT_NOT_FOUND") from exc

    async def put(self, uri: str, data: bytes) -> None:
        """Writes one file atomically (write to a temporary name, then rename)."""
        path = _local_path(uri)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

        await asyncio.to_thread(write)

    async def delete_prefix(self, prefix: str) -> int:
        """Deletes every file under a prefix, then the folders that became empty."""

        def remove() -> int:
            paths = self._matching(prefix)
            for path in paths:
                path.unlink(missing_ok=True)
            for folder in sorted(
                {p.parent for p in paths}, key=lambda p: len(p.parts), reverse=True
            ):
                while folder != self._root and folder.is_relative_to(self._root):
                    try:
                        folder.rmdir()
                    except OSError:  # not empty: other objects live there
                        break
                    folder = folder.parent
            return len(paths)

        return await asyncio.to_thread(remove)

    async def close(self) -> None:
        """Nothing to release."""


def object_store_for(location: str, s3: S3Settings) -> ObjectStore:
    """The adapter for a warehouse location, chosen by its scheme.

    Raises:
        InvalidArgument: The scheme is neither s3 nor file.
    """
    scheme = urlparse(location).scheme
    if scheme in {"s3", "s3a"}:
        return S3ObjectStore(s3, location)
    if scheme in {"file", ""}:
        return LocalObjectStore(location)
    raise InvalidArgument(f"unsupported warehouse location {location!r}: use s3:// or file://")
