"""The server interceptors: metrics, one JSON log line per RPC, error mapping, request decoding.

The order (see ``lakehouse.server.app``): OpenTelemetry's interceptor, then
:class:`ObservabilityInterceptor` (error mapping innermost in it, so metrics and logs see the
final status code), then the auth interceptor, then :class:`RequestDecodingInterceptor`, so
that a request whose bytes do not parse fails only after its caller was authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace

from lakehouse.core.caller import set_current_principal
from lakehouse.core.survival import EscapedError
from lakehouse.domain.errors import InvalidArgument, LakehouseError, ResourceExhausted
from lakehouse.domain.status import RpcFailure, failure_for, internal_failure, simple_failure
from lakehouse.server import metrics
from lakehouse.server.limits import CallDeadlines

log = logging.getLogger("lakehouse.rpc")
Context = grpc.aio.ServicerContext[Any, Any]
REQUEST_ID_HEADER = "x-request-id"


class _PeerGone(Exception):
    """A response could not be sent: the client cancelled the call or its connection went."""


@dataclass
class _Call:
    """Bookkeeping of one RPC."""

    grpc_type: str
    service: str
    method: str
    peer: str
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    code: grpc.StatusCode = grpc.StatusCode.OK
    error: str = ""
    principal: str = ""

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.grpc_type, self.service, self.method)


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


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


def _trace_id() -> str:
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


class RequestDecodingInterceptor(grpc.aio.ServerInterceptor):
    """Fails a call whose request bytes do not parse, as the innermost interceptor.

    Its tolerant deserializer is the one gRPC uses (the interceptors around it keep their
    handler's deserializer), so a malformed message reaches the outer interceptors as an
    :class:`UndecodableRequest`; only here, right before the servicer, does it become
    ``INVALID_ARGUMENT``. Innermost, because what the caller learns about its request bytes
    is an answer like any other: an anonymous caller is told ``UNAUTHENTICATED``, a role
    that may not call the method at all ``PERMISSION_DENIED``, whatever the bytes.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wraps the handler's behavior and makes its request deserializer tolerant."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
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


def _checked_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        return await behavior(_decoded(request), context)

    return handle


def _checked_client_stream(
    behavior: Callable[..., Awaitable[Any]],
) -> Callable[..., Awaitable[Any]]:
    async def handle(requests: AsyncIterator[Any], context: Context) -> Any:
        return await behavior(_all_decoded(requests), context)

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


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Counts, times and logs every RPC and maps exceptions to rich gRPC statuses.

    Args:
        deadlines: The server's own time limit per call (see ``lakehouse.server.limits``);
            None leaves calls to the client's deadline alone.
    """

    def __init__(self, deadlines: CallDeadlines | None = None) -> None:
        self._deadlines = deadlines

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wraps the handler's behavior, keeping its (de)serializers."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, method = split_method(handler_call_details.method)

        def wrap(behavior: Callable[..., Any], grpc_type: str) -> Callable[..., Any]:
            if grpc_type in ("unary", "client_stream"):  # one response
                return self._unary(behavior, grpc_type, service, method)
            return self._streaming(behavior, grpc_type, service, method)

        return rewrapped(
            handler, wrap, response_serializer=passthrough_serializer(handler.response_serializer)
        )

    def _begin(self, grpc_type: str, service: str, method: str, context: Context) -> _Call:
        call = _Call(grpc_type, service, method, context.peer() or "", _request_id(context))
        _current_call.set(call)
        metrics.STARTED.labels(*call.labels).inc()
        metrics.IN_FLIGHT.labels(service, method).inc()
        return call

    def _count_requests(self, call: _Call, request_or_iterator: Any) -> Any:
        """Counts received messages (those that did not parse too: they were received)."""
        if call.grpc_type in ("unary", "server_stream"):
            metrics.MSG_RECEIVED.labels(*call.labels).inc()
            return request_or_iterator

        async def counted() -> AsyncIterator[Any]:
            async for item in request_or_iterator:
                metrics.MSG_RECEIVED.labels(*call.labels).inc()
                yield item

        return counted()

    def _limit(
        self, call: _Call, context: Context, *, streaming: bool
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """The server's time limit for this call (nothing when none is configured)."""
        if self._deadlines is None:
            return contextlib.nullcontext()
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
                f"{call.service}/{call.method} is not implemented yet",
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

    def _finish(self, call: _Call) -> None:
        elapsed = time.perf_counter() - call.started
        metrics.IN_FLIGHT.labels(call.service, call.method).dec()
        metrics.HANDLED.labels(*call.labels, metrics.GO_CODE_NAMES.get(call.code, "Unknown")).inc()
        metrics.HANDLING_SECONDS.labels(*call.labels).observe(elapsed)
        level = logging.ERROR if call.code == grpc.StatusCode.INTERNAL else logging.INFO
        entry = {
            "service": call.service,
            "method": call.method,
            "grpc_type": call.grpc_type,
            "code": call.code.name,
            "duration_ms": round(elapsed * 1000, 3),
            "peer": call.peer,
            "principal": call.principal,
            "request_id": call.request_id,
            "trace_id": _trace_id(),
        }
        if call.error:
            entry["error"] = call.error
        log.log(level, "rpc", extra=entry)

    @staticmethod
    def _observed_code(context: Context, default: grpc.StatusCode) -> grpc.StatusCode:
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else default

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], grpc_type: str, service: str, method: str
    ) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: Context) -> Any:
            call = self._begin(grpc_type, service, method, context)
            try:
                async with self._limit(call, context, streaming=False):
                    response = await behavior(self._count_requests(call, request), context)
                metrics.MSG_SENT.labels(*call.labels).inc()
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
                self._finish(call)

        return handle

    @staticmethod
    async def _write_all(call: _Call, responses: AsyncIterator[Any], context: Context) -> None:
        """Sends a handler's responses with ``context.write``, closing the handler at the end.

        Written here rather than yielded to gRPC so that the time spent sending (a slow
        reader holds a send under HTTP/2 flow control) is inside the server's time limit:
        a cancellation there lands in this frame, not in gRPC's loop, which would end the
        call without a status.
        """
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
                metrics.MSG_SENT.labels(*call.labels).inc()
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    def _streaming(
        self, behavior: Callable[..., Any], grpc_type: str, service: str, method: str
    ) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            call = self._begin(grpc_type, service, method, context)
            try:
                async with self._limit(call, context, streaming=True):
                    result = behavior(self._count_requests(call, request), context)
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
                self._finish(call)
            # The OpenTelemetry interceptor around this one iterates its handler, so this must
            # stay an async generator; it yields nothing: responses went out by context.write.
            return
            yield  # type: ignore[unreachable]

        return handle


def _escaped(exc: BaseException) -> Exception:
    """``exc``, or an ``EscapedError`` in place of a ``SystemExit``/``KeyboardInterrupt``.

    Library code can raise those in a handler (pyiceberg once called a table's
    ``py-io-impl: sys.exit``); a handler task ending with one stops the server's event loop,
    so the call fails with INTERNAL instead. Cancellation is handled before this.
    """
    if isinstance(exc, Exception):
        return exc
    return EscapedError(f"{type(exc).__name__} raised by library code")
