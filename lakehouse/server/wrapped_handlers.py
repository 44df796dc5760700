"""Services registered with their handlers already wrapped in our interceptor chain.

Given as a ``grpc.aio`` server interceptor, the chain costs every call gRPC's interceptor
pipeline: an awaited ``intercept_service`` and, inside gRPC, a coroutine per interceptor plus
the continuation's, before the handler even starts. Wrapping each method's handler once, when
its service is registered, gives the same handlers (same layers, same order, same
(de)serializers) through gRPC's plain lookup instead. OpenTelemetry's interceptor, when spans
are exported, stays a real interceptor outside them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import grpc

from lakehouse.server.interceptors import Handler, InterceptorChain

GenericHandler = grpc.GenericRpcHandler


class _WrappedGenericHandler(GenericHandler):
    """A generic handler whose handlers come out wrapped (once per method, by the chain)."""

    def __init__(self, inner: GenericHandler, chain: InterceptorChain) -> None:
        self._inner = inner
        self._chain = chain

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._chain.wrapped(handler_call_details.method, handler)


class WrappingRegistrar:
    """Stands in for the server where services are added: their handlers get wrapped.

    ``add_..._to_server`` functions (generated, health, reflection) call the two methods
    below; pass them :attr:`server`.

    Args:
        server: The real server.
        chain: Our interceptors, wrapped around every handler registered through this.
    """

    def __init__(self, server: grpc.aio.Server, chain: InterceptorChain) -> None:
        self._server = server
        self._chain = chain

    @property
    def server(self) -> grpc.aio.Server:
        """This registrar, typed as the server that the registering functions expect."""
        return cast(grpc.aio.Server, self)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[GenericHandler]) -> None:
        """Adds generic handlers whose method handlers are wrapped."""
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self._chain) for h in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Handler]
    ) -> None:
        """Adds a service's handlers by method name, wrapped."""
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self._chain.wrapped(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )
