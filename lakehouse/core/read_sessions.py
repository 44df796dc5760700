"""Read sessions: a read planned once, pinned to a snapshot, read as parallel streams.

BigQuery Storage Read's design, stateless: ``create`` plans the read, pins its snapshot and
returns a signed name (``SessionSigner``) that carries the whole selection; ``read_stream``
on any replica sharing the signing key checks the name and reads one stream's share of the pinned
snapshot's files. Nothing is stored, so there is nothing to clean up and no replica to stick
to; a name expires with its TTL.

``read_stream`` yields Arrow batches before any proto encoding: ReadRows encodes them for
gRPC, and a Flight data plane can serve the same stream as a ticket.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pyarrow as pa

from lakehouse.core.ports import CatalogPort
from lakehouse.core.reads import (
    OpenRead,
    ReadOptions,
    ReadStart,
    checked_scan_request,
    scan_items,
)
from lakehouse.core.signed_tokens import MAC_BYTES, SignedTokens, TokenError
from lakehouse.core.signing_key import SigningKey
from lakehouse.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    LakehouseError,
    NotFound,
    PermissionDenied,
)
from lakehouse.domain.read_sessions import (
    SessionClaims,
    StreamEstimate,
    StreamShare,
    b64decode,
    b64encode,
    invalid_session,
)
from lakehouse.domain.row_filter import parse_row_filter_off_loop
from lakehouse.domain.tables import ScanRequest

READ_SESSION_EXPIRED = "READ_SESSION_EXPIRED"
SNAPSHOT_EXPIRED = "SNAPSHOT_EXPIRED"
#: The permission a session's streams are read under (that of ReadRows).
READ_PERMISSION = "tables.read"
#: What session names are signed for (see ``SigningKey.for_purpose``).
PURPOSE = "lakehouse read session v1"


class SessionSigner:
    """Signs and checks session names: ``base64(claims).base64(HMAC-SHA256(key, base64(claims)))``.

    The signature is that of :class:`~lakehouse.core.signed_tokens.SignedTokens` over the
    name's first part, with the service's signing key derived for read sessions.
    """

    def __init__(self, key: SigningKey) -> None:
        self._tokens = SignedTokens(key, PURPOSE)

    def sign(self, claims: SessionClaims) -> str:
        """The session name of ``claims``."""
        payload = b64encode(claims.encode())
        mac = self._tokens.sign(payload.encode("ascii"))[-MAC_BYTES:]
        return f"{payload}.{b64encode(mac)}"

    def verify(self, name: str) -> SessionClaims:
        """The claims of a name this signer made.

        Raises:
            InvalidArgument: A malformed, altered or foreign name (INVALID_READ_SESSION).
        """
        payload, dot, mac = name.partition(".")
        if not dot or not payload.isascii() or not mac.isascii():
            raise invalid_session("is not a read session of this service")
        signature = b64decode(mac)
        try:
            # Exactly one signature after the dot: otherwise a name re-split across it (the
            # signature's first byte moved before the dot) would verify as the same bytes.
            if len(signature) != MAC_BYTES:
                raise TokenError("the signature part is not one signature")
            signed = self._tokens.verify(payload.encode("ascii") + signature)
        except TokenError:
            raise invalid_session(
                "does not verify: altered, or signed with another key (auth.signing_key "
                "changed, or replicas that do not share it)"
            ) from None
        return SessionClaims.decode(b64decode(signed.decode("ascii")))


@dataclass(frozen=True)
class ReadSession:
    """A created session: its name, pinned snapshot, schema, expiry and streams.

    ``claims`` are what ``name`` carries, for a Flight ticket of a stream to carry them as
    they are (signed once, by the ticket) rather than the signed name inside a signed ticket.
    """

    name: str
    snapshot_id: int | None
    schema: pa.Schema
    expire_ms: int
    streams: tuple[StreamEstimate, ...]
    claims: SessionClaims


class ReadSessions:
    """The use case behind CreateReadSession and ReadRows(read_session, stream)."""

    def __init__(
        self,
        catalog: CatalogPort,
        signer: SessionSigner,
        *,
        ttl_seconds: float,
        max_streams: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._signer = signer
        self._ttl_ms = int(ttl_seconds * 1000)
        self._max_streams = max_streams
        self._clock = clock

    async def create(
        self,
        namespace: str,
        name: str,
        options: ReadOptions,
        *,
        max_streams: int,
        principal: str,
        keep_plan: bool = True,
    ) -> ReadSession:
        """Plans a read, pins its snapshot and splits it into streams of about equal bytes.

        Args:
            namespace: The table's namespace.
            name: The table.
            options: The selection (no incremental range).
            max_streams: The most streams the caller wants; 0: the server's cap.
            principal: The caller, the only one who may read the streams.
            keep_plan: Keep the plan for the streams' reads; False when they are not read by
                share (Flight's ReadRowsRequest: its do_get is a ReadRows of the pinned
                snapshot, which plans for itself).

        Raises:
            InvalidArgument: Bad names, columns, filter, limit, version or max_streams.
            NotFound: No such table, snapshot or ref.
            Unavailable: The catalog or the object store failed.
        """
        if max_streams < 0:
            raise InvalidArgument.field("max_streams", f"must not be negative, got {max_streams}")
        request = await checked_scan_request(self._catalog, namespace, name, options)
        wanted = min(max_streams or self._max_streams, self._max_streams)
        if options.limit:
            # The rows a limit keeps are the first ones in the files' order: one stream reads
            # them as ReadRows does (allotting the limit across streams needs their counts).
            wanted = 1
        plan = await self._catalog.plan_read_session(
            namespace, name, request, wanted, keep_plan=keep_plan
        )
        expire_ms = int(self._clock() * 1000) + self._ttl_ms
        claims = SessionClaims(
            namespace=namespace,
            table=name,
            snapshot_id=plan.snapshot_id,
            columns=options.columns,
            row_filter=options.row_filter,
            limit=options.limit,
            streams=len(plan.streams),
            principal=principal,
            expire_ms=expire_ms,
        )
        return ReadSession(
            self._signer.sign(claims),
            plan.snapshot_id,
            plan.schema,
            expire_ms,
            plan.streams,
            claims,
        )

    def claims(self, principal: str, session: str, stream: int) -> SessionClaims:
        """The checked claims of a stream read by ``principal``.

        Raises:
            InvalidArgument: A name this service did not sign (INVALID_READ_SESSION), or no
                such stream.
            FailedPrecondition: The session expired (READ_SESSION_EXPIRED).
            PermissionDenied: Another caller's session.
        """
        return self.checked(principal, self._signer.verify(session), stream)

    def checked(self, principal: str, claims: SessionClaims, stream: int) -> SessionClaims:
        """``claims`` if ``principal`` may read their ``stream`` now.

        The claims are verified already: a session name's, or a Flight ticket's.

        Raises:
            InvalidArgument: No such stream.
            FailedPrecondition: The session expired (READ_SESSION_EXPIRED).
            PermissionDenied: Another caller's session.
        """
        if int(self._clock() * 1000) > claims.expire_ms:
            raise FailedPrecondition(
                "the read session expired: create a new one",
                reason=READ_SESSION_EXPIRED,
                metadata={"namespace": claims.namespace, "table": claims.table},
            )
        if not hmac.compare_digest(claims.principal.encode(), principal.encode()):
            raise PermissionDenied(
                "the read session belongs to another caller", permission=READ_PERMISSION
            )
        if not 0 <= stream < claims.streams:
            raise InvalidArgument.field(
                "stream", f"must be from 0 to {claims.streams - 1} (the session's streams)"
            )
        return claims

    async def read_stream(
        self, principal: str, session: str, stream: int, *, budget_bytes: int
    ) -> AsyncIterator[ReadStart | pa.RecordBatch]:
        """Yields a ReadStart, then one stream's record batches of about ``budget_bytes``.

        The stream can be read again from its start, on any replica, until the session
        expires (its snapshot is pinned).

        Raises:
            InvalidArgument: A name this service did not sign (INVALID_READ_SESSION), or no
                such stream.
            FailedPrecondition: The session expired (READ_SESSION_EXPIRED), or its snapshot
                was expired by maintenance since (SNAPSHOT_EXPIRED).
            PermissionDenied: Another caller's session.
            NotFound: The table was dropped.
            Unavailable: The catalog or the object store failed.
        """
        claims = self.claims(principal, session, stream)
        async for item in self.read_checked(claims, stream, budget_bytes=budget_bytes):
            yield item

    async def read_checked(
        self, claims: SessionClaims, stream: int, *, budget_bytes: int
    ) -> AsyncIterator[ReadStart | pa.RecordBatch]:
        """``read_stream`` of claims :meth:`claims` or :meth:`checked` returned.

        Raises:
            FailedPrecondition: The session's snapshot was expired by maintenance since
                (SNAPSHOT_EXPIRED).
            NotFound: The table was dropped.
            Unavailable: The catalog or the object store failed.
        """
        request = await self._scan_request(claims, stream)
        items = scan_items(
            self._catalog, claims.namespace, claims.table, request, budget_bytes=budget_bytes
        )
        try:
            async for item in items:
                yield item
        except NotFound as exc:
            raise _snapshot_expired(claims, exc) from None

    async def open_checked(
        self, claims: SessionClaims, stream: int, *, budget_bytes: int
    ) -> OpenRead:
        """``read_checked``, opened on the loop and read on the caller's thread (:class:`OpenRead`).

        Raises:
            FailedPrecondition: As :meth:`read_checked` (SNAPSHOT_EXPIRED); so do NotFound
                and Unavailable. A failure of a later batch is raised by ``OpenRead.batches``.
        """
        request = await self._scan_request(claims, stream)
        try:
            return await OpenRead.open(
                self._catalog, claims.namespace, claims.table, request, budget_bytes=budget_bytes
            )
        except NotFound as exc:
            raise _snapshot_expired(claims, exc) from None

    async def _scan_request(self, claims: SessionClaims, stream: int) -> ScanRequest:
        """The scan of a session's stream: its share of the pinned snapshot's files."""
        info = await self._catalog.load_table(claims.namespace, claims.table)
        expression = await parse_row_filter_off_loop(claims.row_filter, info.schema)
        return ScanRequest(
            columns=claims.columns,
            row_filter=expression,
            snapshot_id=claims.snapshot_id,
            as_of_ms=None,
            limit=claims.limit or None,
            share=StreamShare(stream, claims.streams),
        )


def _snapshot_expired(claims: SessionClaims, exc: NotFound) -> LakehouseError:
    """``exc``, or SNAPSHOT_EXPIRED when it says the session's pinned snapshot is gone."""
    if exc.reason != "SNAPSHOT_NOT_FOUND":
        return exc
    return FailedPrecondition(
        f"the read session's snapshot {claims.snapshot_id} was expired: create a new session",
        reason=SNAPSHOT_EXPIRED,
        metadata={"namespace": claims.namespace, "table": claims.table},
    )
