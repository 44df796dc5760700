"""The auth interceptor: who is calling, may they make this call, and the audit log.

It sits inside ``ObservabilityInterceptor`` (see ``lakehouse.server.app``), so a refused call
is an ordinary domain error raised from the handler: ``UNAUTHENTICATED`` or
``PERMISSION_DENIED`` with an ``ErrorInfo``, counted in the metrics and logged like any other
outcome. The check runs inside the handler rather than in ``intercept_service`` because only
there are the peer's certificate and the request message at hand: ``CreateJob``'s permission
depends on its spec, and namespace grants on the namespace a request names.

It also sits outside ``RequestDecodingInterceptor``: request bytes that do not parse reach it
as an ``UndecodableRequest``, and fail the call only after the caller was authenticated and
its role found to allow the method at all (the permission an empty request would need), so
nobody learns anything from the server without credentials.

For each call, in order:

1. Public services (health, reflection; configurable) pass untouched.
2. The caller is authenticated (:mod:`lakehouse.server.credentials`); failures are logged at
   INFO with the reason, and the client hears only "missing" or "invalid credentials".
3. The method's rule (:mod:`lakehouse.server.permissions`) names the permission; the caller's
   role must hold it, and any further permission the request needs (a write mode that
   removes rows); a request stream's messages are checked for the latter one by one, as the
   handler reads them, so a message asking for more than the caller may do is never acted on.
4. A namespace-limited caller must hold a grant for every namespace the request touches;
   client-streaming requests are checked message by message as the handler reads them; jobs
   named by id are looked up; list responses are filtered. A request that did not parse
   names no namespace: it goes on to fail with ``INVALID_ARGUMENT``.
5. Mutating calls, and every refused call, leave one line on the ``lakehouse.audit`` logger.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

from lakehouse.config import AuthSettings
from lakehouse.domain.errors import LakehouseError, PermissionDenied, Unauthenticated
from lakehouse.server.credentials import ANONYMOUS, Authenticator, CredentialError, Principal
from lakehouse.server.interceptors import (
    Handler,
    MethodInterceptor,
    UndecodableRequest,
    current_request_id,
    rewrapped,
    set_principal,
    split_method,
)
from lakehouse.server.permissions import (
    HEALTH_SERVICE,
    READ_PERMISSIONS,
    REFLECTION_SERVICES,
    RULES,
    Rule,
    Target,
    check_further,
    check_namespaces,
    check_role,
    is_authenticated_only,
)
from lakehouse.server.permissions import check as permission_check

log = logging.getLogger("lakehouse.auth")
audit_log = logging.getLogger("lakehouse.audit")
Context = grpc.aio.ServicerContext[Any, Any]
#: The pseudo-permission of a method missing from the table: only admin, who may do
#: everything, may call it.
UNMAPPED_PERMISSION = "*"
_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class JobRecordLike(Protocol):
    """What the interceptor reads of a stored job."""

    @property
    def namespace(self) -> str:
        """The namespace of the job's table; "" when it has none."""


class JobLookup(Protocol):
    """Finds a job by id (``lakehouse.core.jobs.Jobs`` is one)."""

    async def get(self, job_id: str) -> JobRecordLike:
        """The job.

        Raises:
            NotFound: No such job.
            InvalidArgument: A malformed id.
        """


@dataclass
class _Check:
    """One call's authorization, as the audit line reports it."""

    method: str
    rule: Rule | None
    principal: Principal | None = None
    permission: str = ""
    target: Target = field(default_factory=Target)
    refused: bool = False

    @property
    def mutating(self) -> bool:
        if self.rule is None:
            return not is_authenticated_only(split_method(self.method)[0])
        return self.permission not in READ_PERMISSIONS


def _outcome(exc: BaseException, context: Context) -> grpc.StatusCode:
    """The status code ``exc`` will end the call with (as the observability layer maps it)."""
    if isinstance(exc, LakehouseError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED  # GeneratorExit: the stream was closed early
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK:
        return code  # an abort, or UNIMPLEMENTED set by a generated base servicer
    return grpc.StatusCode.INTERNAL


def _least_permission(rule: Rule, request: UndecodableRequest) -> str:
    """The permission a request that did not parse is checked against.

    An empty request of the method's type asks for nothing in particular, so it needs the
    least any request of the method needs (``jobs.create`` for ``CreateJob``).
    """
    if rule.fixed_permission is not None:
        return rule.fixed_permission
    if request.message_type is None:
        return UNMAPPED_PERMISSION
    return rule.permission_for(request.message_type())


def _finished(context: Context) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


class AuthInterceptor(MethodInterceptor):
    """Authenticates and authorizes every call, and writes the audit log.

    Args:
        authenticator: Verifies credentials; when it is not enabled every caller is the
            anonymous admin (calls are still audited).
        settings: The auth settings (which services are public).
        jobs: Looks up a job's namespace for namespace-limited callers of GetJob, WatchJob,
            CancelJob and DeleteJob; without it those callers are refused such calls.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        settings: AuthSettings,
        *,
        jobs: JobLookup | None = None,
    ) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._jobs = jobs
        public = set()
        if settings.public_health:
            public.add(HEALTH_SERVICE)
        if settings.public_reflection:
            public |= REFLECTION_SERVICES
        self._public = frozenset(public)
        if authenticator.enabled:
            log.info(
                "authentication is on",
                extra={**authenticator.describe(), "public_services": sorted(self._public)},
            )
        else:
            log.warning(
                "authentication is off: every caller has the admin role",
                extra={"auth_mode": settings.mode},
            )

    def wrap_method(self, method: str, handler: Handler) -> Handler:
        """Wraps the handler in the checks, keeping its (de)serializers."""
        if split_method(method)[0] in self._public:
            return handler
        rule = RULES.get(method)

        def wrap(behavior: Callable[..., Any], grpc_type: str) -> Callable[..., Any]:
            streamed = grpc_type in ("client_stream", "bidi_stream")
            if grpc_type in ("unary", "client_stream"):  # one response
                return self._unary(behavior, method, rule, streamed_requests=streamed)
            return self._streaming(behavior, method, rule, streamed_requests=streamed)

        return rewrapped(handler, wrap)

    def _unary(
        self,
        behavior: Callable[..., Awaitable[Any]],
        method: str,
        rule: Rule | None,
        *,
        streamed_requests: bool,
    ) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: Context) -> Any:
            check = _Check(method, rule)
            code = grpc.StatusCode.OK
            try:
                principal = await self._admit(check, request, context, streamed_requests)
                if streamed_requests:
                    request = self._guarded(check, principal, request)
                response = await behavior(request, context)
                self._filter(rule, principal, response)
                code = _finished(context)
                return response
            except BaseException as exc:
                code = _outcome(exc, context)
                raise
            finally:
                self._audit(check, code, context)

        return handle

    def _streaming(
        self,
        behavior: Callable[..., Any],
        method: str,
        rule: Rule | None,
        *,
        streamed_requests: bool,
    ) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            check = _Check(method, rule)
            code = grpc.StatusCode.OK
            try:
                principal = await self._admit(check, request, context, streamed_requests)
                if streamed_requests:
                    request = self._guarded(check, principal, request)
                result = behavior(request, context)
                if inspect.isawaitable(result):  # a handler writing with context.write()
                    await result
                else:
                    async for response in result:
                        yield response
                code = _finished(context)
            except BaseException as exc:
                code = _outcome(exc, context)
                raise
            finally:
                self._audit(check, code, context)

        return handle

    async def _admit(
        self, check: _Check, request: Any, context: Context, streamed_requests: bool
    ) -> Principal:
        """Authenticates and authorizes one call; returns its caller.

        Raises:
            Unauthenticated: No credentials, or bad ones.
            PermissionDenied: The caller's role or namespace grants do not cover the call.
        """
        rule = check.rule
        undecodable = isinstance(request, UndecodableRequest)
        if rule is not None:
            if streamed_requests:
                # Known before any message: client-streaming rules have a fixed permission
                # (a test holds the table to that); targets come with the messages.
                check.permission = rule.fixed_permission or UNMAPPED_PERMISSION
            elif isinstance(request, UndecodableRequest):
                check.permission = _least_permission(rule, request)
            else:
                check.permission = rule.permission_for(request)
                check.target = rule.target(request)
        elif not is_authenticated_only(split_method(check.method)[0]):
            check.permission = UNMAPPED_PERMISSION
        try:
            principal = (
                self._authenticator.authenticate(
                    context.invocation_metadata() or (), context.auth_context
                )
                if self._authenticator.enabled
                else ANONYMOUS  # open: not even the metadata is read
            )
        except CredentialError as exc:
            check.refused = True
            log.info(
                "authentication failed",
                extra={
                    "method": check.method,
                    "reason": exc.detail,
                    "peer": context.peer() or "",
                    "request_id": current_request_id(),
                },
            )
            raise Unauthenticated(exc.client_message) from None
        check.principal = principal
        set_principal(principal.name)
        if check.permission == UNMAPPED_PERMISSION:
            if principal.role != "admin":
                check.refused = True
                raise PermissionDenied(
                    f"permission denied: {check.method} is admin-only",
                    permission=UNMAPPED_PERMISSION,
                )
            log.error("method missing from the permission table", extra={"method": check.method})
        else:
            try:
                if rule is not None and not streamed_requests and not undecodable:
                    # The one decision the Flight port takes too (permissions.check).
                    check.permission = permission_check(principal, check.method, request)
                elif check.permission:
                    check_role(principal, check.permission, check.method)
            except PermissionDenied as exc:
                check.refused = True
                check.permission = exc.permission
                raise
            if not streamed_requests and not undecodable:
                await self._check_job(check, principal, check.target)
        return principal

    async def _check_message(
        self, check: _Check, principal: Principal, rule: Rule, request: Any, target: Target
    ) -> None:
        """Checks one message of a request stream: its further permission, and its target.

        Raises:
            PermissionDenied: The role lacks the further permission the message needs, or
                the target is outside the caller's namespace grants.
        """
        try:
            further = check_further(principal, rule, request, check.method)
            if further is not None:
                check.permission = further  # the audit names the stronger
            check_namespaces(principal, target, check.permission)
        except PermissionDenied as exc:
            check.refused = True
            check.permission = exc.permission
            raise
        await self._check_job(check, principal, target)

    async def _check_job(self, check: _Check, principal: Principal, target: Target) -> None:
        """Refuses a call on a job outside a namespace-limited caller's grants."""
        if target.job_id and principal.namespaces is not None:
            job_namespace = await self._job_namespace(target.job_id)
            if job_namespace is None or not principal.may_touch(job_namespace):
                check.refused = True
                raise PermissionDenied(
                    f"permission denied: job {target.job_id!r} is outside the caller's "
                    "namespace grants",
                    permission=check.permission,
                    metadata={"job_id": target.job_id},
                )

    async def _job_namespace(self, job_id: str) -> str | None:
        """The namespace of a job ("" jobs have none); None when jobs cannot be looked up."""
        if self._jobs is None:
            return None
        return (await self._jobs.get(job_id)).namespace or None

    async def _guarded(
        self, check: _Check, principal: Principal, requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """Request messages of a client stream, each checked against the caller's grants.

        The first message's target is the call's target in the audit log (AppendRows names
        its table in the first message). Later messages may leave the namespace empty ("the
        stream's table"), so only the namespaces they do name are checked; the first one
        must name its own. Any message may need a further permission (an AppendRows write
        mode that removes rows): checked here too, before the handler sees the message.
        """
        rule = check.rule
        first = True
        async for request in requests:
            if rule is not None and not isinstance(request, UndecodableRequest):
                target = rule.target(request)
                if first:
                    check.target = target
                elif target.namespaces:
                    target = replace(target, namespaces=tuple(n for n in target.namespaces if n))
                await self._check_message(check, principal, rule, request, target)
            first = False
            yield request

    @staticmethod
    def _filter(rule: Rule | None, principal: Principal, response: Any) -> None:
        """Removes what a namespace-limited caller may not see from a list response."""
        if (
            rule is not None
            and rule.filter_response is not None
            and principal.namespaces is not None
            and isinstance(response, Message)
        ):
            rule.filter_response(response, principal.may_touch)

    def _audit(self, check: _Check, code: grpc.StatusCode, context: Context) -> None:
        """One line per mutating or refused call on the ``lakehouse.audit`` logger."""
        refused = check.refused or code in _REFUSED
        if not (refused or check.mutating):
            return
        principal = check.principal
        audit_log.info(
            "audit",
            extra={
                "principal": principal.name if principal is not None else "",
                "role": principal.role if principal is not None else "",
                "auth": principal.via if principal is not None else "",
                "method": check.method,
                "permission": check.permission,
                "target": dict(check.target.attributes),
                "outcome": code.name,
                "request_id": current_request_id(),
                "peer": context.peer() or "",
            },
        )
