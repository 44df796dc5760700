"""The object store port and its adapters: S3-compatible (aioboto3) and local folders.

Locations are URIs: ``s3://bucket/key`` or ``file:///path``. The S3 adapter uses only the
S3 API that every S3-compatible store implements (MinIO, Ceph, AWS), with path-style
addressing when configured. Its requests go through the object store's circuit breaker, are
cut at the call's deadline, and are retried on transient failures by the service's policy
(``lakehouse.adapters.resilience``) rather than botocore's: every request it makes can be
repeated safely (reads, listings, whole-object PUTs, deletes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from lakehouse.adapters.resilience import OBJECT_STORE, Resilience, is_outage
from lakehouse.config import ResilienceSettings, S3Settings
from lakehouse.deadlines import remaining_seconds
from lakehouse.domain.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from lakehouse.domain.objects import ObjectInfo

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

_DELETE_BATCH = 1000  # the S3 DeleteObjects maximum
#: S3 error codes that say "later", not "no": throttling and server-side timeouts.
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "InternalError",
    }
)

T = TypeVar("T")


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme not in {"s3", "s3a"} or not parsed.netloc:
        raise InvalidArgument(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


class S3ObjectStore:
    """Object store over any S3-compatible endpoint, with one shared aioboto3 client.

    Args:
        settings: The ``s3`` settings.
        location: The warehouse, ``s3://bucket/prefix``.
        resilience: The process's breakers; a private set when None (tests, tools).
    """

    def __init__(
        self, settings: S3Settings, location: str, resilience: Resilience | None = None
    ) -> None:
        self._settings = settings
        self._bucket, self._prefix = _split_s3(location)
        self._client: S3Client | None = None
        self._client_cm: Any = None
        self._lock = asyncio.Lock()
        self._resilience = resilience or Resilience(ResilienceSettings())
        self._breaker = self._resilience.breaker(OBJECT_STORE)

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
                        # One attempt per request: retries are the adapter's (see above), so
                        # that they respect the call's deadline and are not multiplied.
                        retries={"max_attempts": 1, "mode": "standard"},
                    ),
                )
                self._client = await self._client_cm.__aenter__()
        assert self._client is not None
        return self._client

    async def _request(self, make: Callable[[S3Client], Awaitable[T]], uri: str) -> T:
        """One S3 request behind the breaker, cut at the call's deadline, retried if transient.

        Raises:
            NotFound: No such object or bucket.
            Unavailable: The object store failed (``CircuitOpen`` when its breaker is open).
            DeadlineExceeded: The call's deadline passed.
        """

        async def attempt() -> T:
            client = await self._s3()
            deadline = asyncio.timeout(remaining_seconds())
            try:
                async with deadline:
                    return await make(client)
            except TimeoutError as exc:
                if not deadline.expired():
                    raise _translate(exc, uri) from exc  # botocore's own timeout
                raise DeadlineExceeded(
                    f"the call's deadline passed while the object store handled {uri}",
                    metadata={"dependency": OBJECT_STORE},
                ) from None
            except (BotoCoreError, ClientError, OSError) as exc:
                raise _translate(exc, uri) from exc

        return await self._resilience.call(
            attempt, uses=(self._breaker,), retry=True, outage=_is_outage
        )

    async def check(self) -> None:
        """Raises Unavailable unless the warehouse bucket answers HeadBucket.

        The health check: it bypasses the breaker, which it is meant to close once the store
        answers again (see ``lakehouse.server.health``).
        """
        try:
            await (await self._s3()).head_bucket(Bucket=self._bucket)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise Unavailable(
                f"object store: bucket {self._bucket!r} is not reachable: {_brief(exc)}",
                reason="OBJECT_STORE_UNAVAILABLE",
            ) from exc

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Lists objects under an ``s3://`` prefix, page by page (each page retried alone)."""
        bucket, key_prefix = _split_s3(prefix)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix}
            if token is not None:
                kwargs["ContinuationToken"] = token
            page = await self._request(functools.partial(_list_page, **kwargs), prefix)
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    uri=f"s3://{bucket}/{obj['Key']}",
                    size=int(obj.get("Size", 0)),
                    last_modified_epoch=obj["LastModified"].timestamp(),
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def get(self, uri: str) -> bytes:
        """Reads one object."""
        bucket, key = _split_s3(uri)

        async def read(client: S3Client) -> bytes:
            response = await client.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data

        return await self._request(read, uri)

    async def put(self, uri: str, data: bytes) -> None:
        """Writes one object (replacing it: repeating the request is harmless)."""
        bucket, key = _split_s3(uri)
        await self._request(lambda c: c.put_object(Bucket=bucket, Key=key, Body=data), uri)

    async def delete_prefix(self, prefix: str) -> int:
        """Deletes all objects under a prefix, 1,000 per request."""
        bucket, _ = _split_s3(prefix)
        deleted = 0
        batch: list[str] = []
        async for obj in self.list_objects(prefix):
            batch.append(_split_s3(obj.uri)[1])
            if len(batch) == _DELETE_BATCH:
                deleted += await self._delete_batch(bucket, batch, prefix)
                batch = []
        if batch:
            deleted += await self._delete_batch(bucket, batch, prefix)
        return deleted

    async def _delete_batch(self, bucket: str, keys: list[str], prefix: str) -> int:
        async def delete(client: S3Client) -> int:
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

        return await self._request(delete, prefix)

    async def close(self) -> None:
        """Closes the shared client."""
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
            self._client = None
            self._client_cm = None


def _brief(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


async def _list_page(client: S3Client, **request: Any) -> Any:
    return await client.list_objects_v2(**request)


def _is_outage(exc: Unavailable) -> bool:
    """Whether the store failed, rather than refused this one request (AccessDenied, 400s).

    A refusal is still reported as UNAVAILABLE, but neither retried nor counted against the
    breaker: one bucket without access must not stop the service from using the others.
    """
    cause = exc.__cause__
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
        return error.get("Code", "") in _TRANSIENT_CODES or status >= 500 or status in (408, 429)
    return is_outage(exc)


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
        # In key order, as S3 lists (``sorted(found)`` compared path parts: "a/b" before "a-c").
        return sorted(found, key=str)

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
        """Reads one file.

        Raises:
            NotFound: No such file. A folder is no object either (as a prefix in S3 is not).
        """
        try:
            return await asyncio.to_thread(_local_path(uri).read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
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


def object_store_for(
    location: str, s3: S3Settings, resilience: Resilience | None = None
) -> S3ObjectStore | LocalObjectStore:
    """The adapter for a warehouse location, chosen by its scheme.

    Args:
        location: The warehouse, ``s3://...`` or ``file://...``.
        s3: The ``s3`` settings.
        resilience: The process's breakers (the S3 adapter reports to the object store's).

    Raises:
        InvalidArgument: The scheme is neither s3 nor file.
    """
    scheme = urlparse(location).scheme
    if scheme in {"s3", "s3a"}:
        return S3ObjectStore(s3, location, resilience)
    if scheme in {"file", ""}:
        return LocalObjectStore(location)
    raise InvalidArgument(f"unsupported warehouse location {location!r}: use s3:// or file://")
