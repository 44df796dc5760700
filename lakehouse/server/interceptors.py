r"""The server interceptors: metrics, one JSON log line per RPC, error mapping, request decoding.

The order (see ``lakehouse.server.app``): OpenTelemetry's interceptor (only when spans are
exported), then :class:`ObservabilityInterceptor` (error mapping innermost in it, so metrics
and logs see the final status code), then the auth interceptor, then
:class:`RequestDecodingInterceptor`, so that a request whose bytes do not parse fails only
after its caller was authenticated.

Every call pays this chain, so it is built to cost what it must (issue 18): the layers are
:class:`MethodInterceptor`\ s, whose wrapping depends only on the method, composed by one
:class:`InterceptorChain` and wrapped once per method rather than once per call, as services
are registered (``lakehouse.server.wrapped_handlers``: no gRPC interceptor pipeline per call);
inner layers hand back their inner awaitable rather than await it in a coroutine of their own;
each method's metrics are one plain record (``lakehouse.server.call_metrics``); the request id
and the caller's W3C trace id come from one pass over the metadata; the log line is built only
when its level is on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace

from lakehouse.core.caller import set_current_principal
from lakehouse.core.survival import EscapedError
from lakehouse.domain.errors import (
    InvalidArgument,
    LakehouseError,
    ResourceExhausted,
    Unavailable,
)
from lakehouse.domain.status import RpcFailure, failure_for, internal_failure, simple_failure
from lakehouse.logs import direct_handler
from lakehouse.server.call_metrics import GRPC_SERVER
from lakehouse.server.limits import CallDeadlines, CallSlots
from lakehouse.server.permissions import HEALTH_SERVICE, REFLECTION_SERVICES

log = logging.getLogger("lakehouse.rpc")
Context = grpc.aio.ServicerContext[Any, Any]
REQUEST_ID_HEADER = "x-request-id"
TRACEPARENT_HEADER = "traceparent"
#: Services the process-wide call limit never refuses: probes and operators get through.
UNLIMITED_SERVICES = frozenset({HEALTH_SERVICE, *REFLECTION_SERVICES})
#: Services whose successful calls have no access-log line unless ``access_log_probes`` is on:
#: load balancers and the kubelet call them every few seconds per replica.
PROBE_SERVICES = UNLIMITED_SERVICES
#: A W3C ``traceparent`` (version, trace id, parent id, flags); read for the log line when no
#: OpenTelemetry interceptor runs (tracing off), as its no-op tracer would have carried it.
_TRACEPARENT = re.compile(
    r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*"
)
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16


class _PeerGone(Exception):
    """A response could not be sent: the client cancelled the call or its connection went."""


class _Method:
    """What every call of one method shares: its names and its metrics record.

    Resolved once per method, so a call does no label lookups.
    """

    __slots__ = ("grpc_type", "limited", "method", "metrics", "probe", "service")

    def __init__(self, grpc_type: str, service: str, method: str) -> None:
        self.grpc_type = grpc_type
        self.service = service
        self.method = method
        self.limited = service not in UNLIMITED_SERVICES
        self.probe = service in PROBE_SERVICES
        self.metrics = GRPC_SERVER.method(grpc_type, service, method)


class _Call:
    """Bookkeeping of one RPC."""

    __slots__ = (
        "code",
        "context",
        "error",
        "info",
        "principal",
        "request_id",
        "started",
        "trace_id",
    )

    def __init__(self, info: _Method, context: Context, request_id: str, trace_id: str) -> None:
        self.info = info
        self.context = context
        self.request_id = request_id
        self.trace_id = trace_id
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.error = ""
        self.principal = ""

    @property
    def method(self) -> str:
        return self.info.method


#: The RPC being handled. Each call runs in its own task, hence its own context, so inner
#: interceptors (auth) reach their call's bookkeeping without a parameter through gRPC.
_current_call: ContextVar[_Call | None] = ContextVar("lakehouse_current_call", default=None)


def set_principal(name: str) -> None:
    """Names the authenticated caller of the current RPC: its log line, per-caller limits."""
    set_current_principal(name)
    call = _current_call.get()
    if call is not None:
        call.principal = name


def current_request_id() -> str:
    """The request id of the current RPC (as in its log line and errors); "" outside one."""
    call = _current_call.get()
    return call.request_id if call is not None else ""


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as ``("pkg.Service", "Method")``; ``("", name)`` if malformed."""
    _, service, method = (
        full_method.split("/", 2) if full_method.count("/") >= 2 else ("", "", full_method)
    )
    return service, method


def _ids(context: Context) -> tuple[str, str]:
    """The call's request id and the trace id of its ``traceparent``, in one pass.

    The request id is the caller's ``x-request-id`` or a new one; the trace id is "" without
    a valid ``traceparent``.
    """
    request_id = traceparent = ""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            if not request_id and isinstance(value, str) and 0 < len(value) <= 128:
                request_id = value
        elif key == TRACEPARENT_HEADER and isinstance(value, str):
            traceparent = value
    # Correlation, not a secret: the module's PRNG costs a tenth of uuid4's os.urandom.
    return request_id or f"{_random.getrandbits(128):032x}", _caller_trace_id(traceparent)


_random = random.Random()


def _caller_trace_id(traceparent: str) -> str:
    """The trace id of a W3C ``traceparent`` header, "" when it is missing or invalid."""
    if not traceparent:
        return ""
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return ""
    version, trace_id, span_id, _, rest = match.groups()
    if (
        version == "ff"
        or (version == "00" and rest)
        or trace_id == _NO_TRACE
        or span_id == _NO_SPAN
    ):
        return ""
    return trace_id


def _span_trace_id() -> str:
    """The trace id of the current OpenTelemetry span ("" without a valid one)."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def passthrough_serializer(
    serializer: Callable[[Any], bytes] | None,
) -> Callable[[Any], bytes] | None:
    """Sends responses a servicer already encoded (``bytes``) as they are.

    Streaming methods with large payloads encode their responses in a worker thread (see
    ``lakehouse.services.wire``) so the event loop does not copy megabytes; everything else
    goes through the generated serializer.
    """
    if serializer is None:
        return None
    inner = serializer

    def serialize(message: Any) -> bytes:
        return message if isinstance(message, bytes) else inner(message)

    return serialize


#: A handler's behavior, wrapped by an interceptor given the call's gRPC type ("unary",
#: "server_stream", "client_stream" or "bidi_stream").
Wrap = Callable[[Callable[..., Any], str], Callable[..., Any]]


def rewrapped(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Wrap,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its behavior passed through ``wrap``, of whichever of the four kinds.

    The (de)serializers stay the handler's unless replaced: gRPC uses the ones of the
    outermost handler it is given, so an interceptor that drops them changes the wire.
    """
    deserializer = request_deserializer or handler.request_deserializer
    serializer = response_serializer or handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, "unary"), deserializer, serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, "server_stream"), deserializer, serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, "client_stream"), deserializer, serializer
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream, "bidi_stream"), deserializer, serializer
    )


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # grpc's classes are generic only in their type stubs
    Handler = grpc.RpcMethodHandler


class MethodInterceptor:
    """One layer of the server's interceptors: a handler's wrapping, given only its method.

    A layer is not a gRPC interceptor on its own: :class:`InterceptorChain` wraps each method's
    handler in all its layers once and keeps the result, so the one cache of wrapped handlers
    is the chain's.
    """

    def wrap_method(self, method: str, handler: Handler) -> Handler:
        """``handler`` of ``method`` (``/pkg.Service/Method``) wrapped in this layer."""
        raise NotImplementedError


class InterceptorChain(grpc.aio.ServerInterceptor):
    """Several method interceptors as one, wrapped around each method's handler once.

    The server registers its services with handlers already wrapped
    (``lakehouse.server.wrapped_handlers``); given to ``grpc.aio.server`` as an interceptor
    (tests do), it is one ``intercept_service`` a call, not one a layer. Either way each
    method's handler is wrapped in every layer once and kept: a call then costs a dictionary
    lookup at most, not new closures and a new handler per layer. gRPC's generic handlers
    return the same handler object for a method every time; a different one is wrapped anew.

    Args:
        layers: Outermost first, as they would be given to ``grpc.aio.server``.
    """

    def __init__(self, layers: Sequence[MethodInterceptor]) -> None:
        self._layers = tuple(reversed(layers))
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def wrap_method(self, method: str, handler: Handler) -> Handler:
        """``handler`` wrapped by every layer, innermost first."""
        for layer in self._layers:
            handler = layer.wrap_method(method, handler)
        return _awaited_by_grpc(handler)

    def wrapped(self, method: str, handler: Handler) -> Handler:
        """``wrap_method``'s result, computed once per method and handler."""
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        result = self.wrap_method(method, handler)
        self._wrapped[method] = (handler, result)
        return result

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """The handler of the call's method, wrapped (once per method)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrapped(handler_call_details.method, handler)


def _awaited_by_grpc(handler: Handler) -> Handler:
    """``handler``, its single-response behavior made a coroutine function if it is not one.

    Inner layers may hand back their inner layer's awaitable without a coroutine of their
    own; gRPC runs a handler that is not a coroutine function in a thread, so the outermost
    one must be (our observability layer is; this covers a chain without it).
    """
    behavior = handler.unary_unary or handler.stream_unary
    if behavior is None or inspect.iscoroutinefunction(behavior):
        return handler
    inner: Callable[..., Awaitable[Any]] = behavior

    async def awaited(request: Any, context: Context) -> Any:
        return await inner(request, context)

    return rewrapped(handler, lambda _behavior, _grpc_type: awaited)


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request message whose bytes did not parse.

    gRPC decodes a unary request before any handler or interceptor runs, and turns a parse
    error into ``UNKNOWN`` with the Python exception's text. The tolerant deserializer hands
    this over instead, and :class:`RequestDecodingInterceptor` fails the call with it like
    any bad input: ``INVALID_ARGUMENT``, reason ``MALFORMED_REQUEST``, with the usual
    ErrorInfo, log line and metrics. Interceptors in between see it in place of the request.

    Attributes:
        type_name: Full name of the message type the bytes should have been.
        detail: What the parser said.
        message_type: That message type (None when the deserializer is not a generated
            ``FromString``): the auth interceptor decides on an empty one which permission
            the call needs at the least.
    """

    type_name: str
    detail: str
    message_type: type[Message] | None = None

    def error(self) -> InvalidArgument:
        """The error the call ends with."""
        return InvalidArgument(
            f"the request is not a valid {self.type_name}: {self.detail}",
            reason="MALFORMED_REQUEST",
        )


def tolerant_deserializer(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """Wraps a request deserializer so that malformed bytes become an ``UndecodableRequest``."""
    if deserializer is None:
        return None
    inner = deserializer
    owner = getattr(inner, "__self__", None)  # the generated ``Message.FromString``
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "request message")
    message_type = owner if isinstance(owner, type) and issubclass(owner, Message) else None

    def deserialize(data: bytes) -> Any:
        try:
            return inner(data)
        except (DecodeError, RecursionError, UnicodeDecodeError) as exc:
            return UndecodableRequest(type_name, str(exc) or type(exc).__name__, message_type)

    return deserialize


class RequestDecodingInterceptor(MethodInterceptor):
    """Fails a call whose request bytes do not parse, as the innermost interceptor.

    Its tolerant deserializer is the one gRPC uses (the interceptors around it keep their
    handler's deserializer), so a malformed message reaches the outer interceptors as an
    :class:`UndecodableRequest`; only here, right before the servicer, does it become
    ``INVALID_ARGUMENT``. Innermost, because what the caller learns about its request bytes
    is an answer like any other: an anonymous caller is told ``UNAUTHENTICATED``, a role
    that may not call the method at all ``PERMISSION_DENIED``, whatever the bytes.
    """

    def wrap_method(self, method: str, handler: Handler) -> Handler:
        """Wraps the handler's behavior and makes its request deserializer tolerant."""
        return rewrapped(
            handler,
            _checked,
            request_deserializer=tolerant_deserializer(handler.request_deserializer),
        )


def _checked(behavior: Callable[..., Any], grpc_type: str) -> Callable[..., Any]:
    """``behavior`` failing the call on a request that did not parse."""
    if grpc_type == "unary":
        return _checked_unary(behavior)
    if grpc_type == "server_stream":
        return _checked_streaming(behavior, _decoded)
    if grpc_type == "client_stream":
        return _checked_client_stream(behavior)
    return _checked_streaming(behavior, _all_decoded)


# The layers inside the outermost one hand their inner layer's awaitable back rather than
# await it in a coroutine of their own: one coroutine less per layer and call, and a refusal
# raised here reaches the outer layer's ``await`` all the same. (Only the outermost handler,
# the one gRPC calls, must be a coroutine function.)


def _checked_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    def handle(request: Any, context: Context) -> Awaitable[Any]:
        return behavior(_decoded(request), context)

    return handle


def _checked_client_stream(
    behavior: Callable[..., Awaitable[Any]],
) -> Callable[..., Awaitable[Any]]:
    def handle(requests: AsyncIterator[Any], context: Context) -> Awaitable[Any]:
        return behavior(_all_decoded(requests), context)

    return handle


def _checked_streaming(
    behavior: Callable[..., Any], checked: Callable[[Any], Any]
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request_or_iterator: Any, context: Context) -> AsyncIterator[Any]:
        async for response in relay(behavior(checked(request_or_iterator), context)):
            yield response

    return handle


async def relay(result: Any) -> AsyncIterator[Any]:
    """Yields the responses of a wrapped streaming handler's ``result``.

    Args:
        result: What the handler returned: an async iterator of responses, or an awaitable
            when the handler writes with ``context.write()`` itself.
    """
    if inspect.isawaitable(result):
        await result
        return
    try:
        async for response in result:
            yield response
    finally:
        # Closed with this generator (a cancelled call, a client gone), so the handler's
        # clean-up runs now rather than whenever the garbage collector gets to it.
        aclose = getattr(result, "aclose", None)
        if aclose is not None:
            await aclose()


def _decoded(request: Any) -> Any:
    """The request, unless it did not parse.

    Raises:
        InvalidArgument: It did not (reason ``MALFORMED_REQUEST``).
    """
    if isinstance(request, UndecodableRequest):
        raise request.error()
    return request


async def _all_decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The messages of a request stream; the first that did not parse fails the call."""
    async for request in requests:
        yield _decoded(request)


class ObservabilityInterceptor(MethodInterceptor):
    """Counts, times and logs every RPC and maps exceptions to rich gRPC statuses.

    It also holds the process-wide bound on calls being handled at once: past
    ``max_concurrent_calls`` a new call (health and reflection aside) ends at once with
    ``RESOURCE_EXHAUSTED``, reason ``SERVER_OVERLOADED``, and a ``RetryInfo``, so an
    overloaded process sheds load with an answer clients retry elsewhere or later, instead of
    piling up handlers.

    Args:
        deadlines: The server's own time limit per call (see ``lakehouse.server.limits``);
            None leaves calls to the client's deadline alone.
        max_concurrent_calls: Calls handled at once at most; 0 for no bound.
        slots: The bound, shared with the Flight port; None: one of ``max_concurrent_calls``.
        span_trace_ids: Take the log line's trace id from the current OpenTelemetry span (an
            exporting tracer runs before this interceptor); otherwise from the caller's
            ``traceparent``, which is what the no-op tracer would report.
        log_probes: Write the access-log line of successful health and reflection calls
            too (failed ones always have theirs).
    """

    def __init__(
        self,
        deadlines: CallDeadlines | None = None,
        *,
        max_concurrent_calls: int = 0,
        slots: CallSlots | None = None,
        span_trace_ids: bool = False,
        log_probes: bool = False,
    ) -> None:
        super().__init__()
        self._log_probes = log_probes
        self._deadlines = deadlines
        self._slots = slots if slots is not None else CallSlots(max_concurrent_calls)
        self._span_trace_ids = span_trace_ids
        self._closing = False

    def refuse_new_calls(self) -> None:
        """Ends every new call (health and reflection aside) at once: UNAVAILABLE.

        The answer has reason ``SHUTTING_DOWN`` and a ``RetryInfo``. Shutdown calls it after
        the drain, a moment before the transport stops: gRPC's stop cancels calls that arrived
        but had not reached a handler yet (``CANCELLED``, which clients do not retry), so
        clients still sending here are turned away first with an answer they retry elsewhere,
        and few calls are left arriving when the port closes.
        """
        self._closing = True

    def wrap_method(self, method: str, handler: Handler) -> Handler:
        """Wraps the handler's behavior, keeping its (de)serializers."""
        service, name = split_method(method)

        def wrap(behavior: Callable[..., Any], grpc_type: str) -> Callable[..., Any]:
            info = _Method(grpc_type, service, name)
            if grpc_type in ("unary", "client_stream"):  # one response
                return self._unary(behavior, info)
            return self._streaming(behavior, info)

        # Only response streams send pre-encoded bytes (ReadRows): a single response keeps the
        # generated serializer, one Python call less per call.
        streams = handler.unary_stream is not None or handler.stream_stream is not None
        serializer = passthrough_serializer(handler.response_serializer) if streams else None
        return rewrapped(handler, wrap, response_serializer=serializer)

    def _begin(self, info: _Method, context: Context) -> _Call:
        request_id, trace_id = _ids(context)
        call = _Call(info, context, request_id, trace_id)
        _current_call.set(call)
        record = info.metrics
        record.started += 1
        record.in_flight += 1
        return call

    def _admit(self, info: _Method) -> bool:
        """Counts the call against the process-wide bound; False when it is not counted.

        Raises:
            Unavailable: The server is shutting down (reason ``SHUTTING_DOWN``).
            ResourceExhausted: The bound is reached (reason ``SERVER_OVERLOADED``).
        """
        if not info.limited:
            return False
        if self._closing:
            raise Unavailable(
                "the server is shutting down; retry on another replica",
                reason="SHUTTING_DOWN",
                retry_after_seconds=SHUTDOWN_RETRY_SECONDS,
            )
        return self._slots.take()

    @staticmethod
    def _count_requests(call: _Call, request_iterator: Any) -> AsyncIterator[Any]:
        """Counts received messages of a request stream (those that did not parse too)."""
        record = call.info.metrics

        async def counted() -> AsyncIterator[Any]:
            async for item in request_iterator:
                record.received += 1
                yield item

        return counted()

    def _limit(self, call: _Call, context: Context, *, streaming: bool) -> Any:
        """The server's time limit for this call (only the client's deadline when none).

        A unary probe (health, reflection) has none: it answers from memory and calls no
        backing service, and the limit (a timer per call) took about 5% of its server CPU.
        A probe's stream (Health/Watch) keeps the stream limit: it is the only bound on how
        long one stays open.
        """
        if self._deadlines is None or (not streaming and not call.info.limited):
            return _NO_LIMIT
        return self._deadlines.applied(context, streaming=streaming, method=call.method)

    async def _fail(self, call: _Call, exc: BaseException, context: Context) -> None:
        """Maps ``exc`` to a status and aborts the call with it (always raises)."""
        failure: RpcFailure
        if isinstance(exc, LakehouseError):
            failure = failure_for(exc, call.request_id)
        elif isinstance(exc, MemoryError):
            # An allocation failed (pyarrow's ArrowMemoryError is one): the process is short of
            # memory, the request is not malformed, and a later attempt may succeed.
            log.warning(
                "out of memory",
                extra={"request_id": call.request_id, "method": call.method, "error": str(exc)},
            )
            failure = failure_for(
                ResourceExhausted(
                    "the server is short of memory for this call; retry later",
                    reason="OUT_OF_MEMORY",
                    retry_after_seconds=1.0,
                ),
                call.request_id,
            )
        elif isinstance(exc, NotImplementedError) and (
            context.code() == grpc.StatusCode.UNIMPLEMENTED
        ):
            failure = simple_failure(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{call.info.service}/{call.method} is not implemented yet",
                "NOT_IMPLEMENTED",
                call.request_id,
            )
        else:
            log.error(
                "unexpected exception",
                exc_info=exc,
                extra={"request_id": call.request_id, "method": call.method},
            )
            failure = internal_failure(call.request_id)
        call.code = failure.code
        call.error = failure.message
        await context.abort(failure.code, failure.message, failure.trailing_metadata)

    def _finish(self, call: _Call, counted: bool) -> None:
        elapsed = time.perf_counter() - call.started
        if counted:
            self._slots.give_back()
        info = call.info
        code = call.code
        info.metrics.ended(code, elapsed)
        if code is grpc.StatusCode.OK and info.probe and not self._log_probes:
            return
        level = logging.ERROR if code is grpc.StatusCode.INTERNAL else logging.INFO
        if not log.isEnabledFor(level):
            return  # no line: build nothing
        entry = {
            "service": info.service,
            "method": info.method,
            "grpc_type": info.grpc_type,
            "code": call.code.name,
            "duration_ms": round(elapsed * 1000, 3),
            "peer": call.context.peer() or "",
            "principal": call.principal,
            "request_id": call.request_id,
            "trace_id": _span_trace_id() if self._span_trace_ids else call.trace_id,
        }
        if call.error:
            entry["error"] = call.error
        handler = direct_handler(log, level)
        if handler is not None:  # only the process's JSON stdout handler would see the record
            handler.write_fields(level, log.name, "rpc", entry)
            return
        # The record as Logger.log would make it, without its search of the caller's frame
        # (file and line are not in the JSON line).
        log.handle(log.makeRecord(log.name, level, "", 0, "rpc", (), None, extra=entry))

    @staticmethod
    def _observed_code(context: Context, default: grpc.StatusCode) -> grpc.StatusCode:
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else default

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], info: _Method
    ) -> Callable[..., Awaitable[Any]]:
        streamed = info.grpc_type == "client_stream"

        async def handle(request: Any, context: Context) -> Any:
            call = self._begin(info, context)
            counted = False
            try:
                counted = self._admit(info)
                if streamed:
                    request = self._count_requests(call, request)
                else:
                    info.metrics.received += 1
                async with self._limit(call, context, streaming=False):
                    response = await behavior(request, context)
                info.metrics.sent += 1
                call.code = self._observed_code(context, grpc.StatusCode.OK)
                return response
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                call.code = self._observed_code(context, grpc.StatusCode.UNKNOWN)
                raise
            except BaseException as exc:
                await self._fail(call, _escaped(exc), context)
            finally:
                self._finish(call, counted)

        return handle

    @staticmethod
    async def _write_all(call: _Call, responses: AsyncIterator[Any], context: Context) -> None:
        """Sends a handler's responses with ``context.write``, closing the handler at the end.

        Written here rather than yielded to gRPC so that the time spent sending (a slow
        reader holds a send under HTTP/2 flow control) is inside the server's time limit:
        a cancellation there lands in this frame, not in gRPC's loop, which would end the
        call without a status.
        """
        record = call.info.metrics
        try:
            async for response in responses:
                try:
                    await context.write(response)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # gRPC's own error (ExecuteBatchError, UsageError) for a send on a call
                    # the client cancelled or whose connection went away: not a bug of ours.
                    raise _PeerGone() from exc
                record.sent += 1
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    def _streaming(
        self, behavior: Callable[..., Any], info: _Method
    ) -> Callable[..., AsyncIterator[Any]]:
        streamed = info.grpc_type == "bidi_stream"

        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            call = self._begin(info, context)
            counted = False
            try:
                counted = self._admit(info)
                if streamed:
                    request = self._count_requests(call, request)
                else:
                    info.metrics.received += 1
                async with self._limit(call, context, streaming=True):
                    result = behavior(request, context)
                    if inspect.isawaitable(result):  # a handler writing with context.write()
                        await result
                    else:
                        await self._write_all(call, result, context)
                call.code = self._observed_code(context, grpc.StatusCode.OK)
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except _PeerGone:
                # The call is over on the client's side: no status can reach it, and there
                # is nothing to log but the CANCELLED line.
                call.code = grpc.StatusCode.CANCELLED
            except grpc.aio.AbortError:
                call.code = self._observed_code(context, grpc.StatusCode.UNKNOWN)
                raise
            except BaseException as exc:
                await self._fail(call, _escaped(exc), context)
            finally:
                self._finish(call, counted)
            # The OpenTelemetry interceptor around this one iterates its handler, so this must
            # stay an async generator; it yields nothing: responses went out by context.write.
            return
            yield  # type: ignore[unreachable]

        return handle


class _NoLimit:
    """The server's limit when none is configured: nothing to enter or leave."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_LIMIT = _NoLimit()
#: What ``SHUTTING_DOWN``'s ``RetryInfo`` asks: another replica answers at once, this one never.
SHUTDOWN_RETRY_SECONDS = 0.1


def _escaped(exc: BaseException) -> Exception:
    """``exc``, or an ``EscapedError`` in place of a ``SystemExit``/``KeyboardInterrupt``.

    Library code can raise those in a handler (pyiceberg once called a table's
    ``py-io-impl: sys.exit``); a handler task ending with one stops the server's event loop,
    so the call fails with INTERNAL instead. Cancellation is handled before this.
    """
    if isinstance(exc, Exception):
        return exc
    return EscapedError(f"{type(exc).__name__} raised by library code")
