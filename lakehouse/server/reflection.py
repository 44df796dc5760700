"""Server reflection that carries the contract's comments.

The descriptors compiled into ``*_pb2.py`` have no source info, so reflection alone would show
``grpcurl describe`` users bare fields. The descriptor set written by ``make gen`` keeps the
comments; this pool serves those file descriptors and delegates every lookup to the default
pool the generated modules registered into.

Both reflection versions are served: ``grpc.reflection.v1alpha`` (what grpcio-reflection
implements, and what older grpcurl asks for) and ``grpc.reflection.v1`` (what buf curl and
newer clients ask for first). The two protos are the same messages under another package, so
the wire bytes are identical: one servicer answers both, the v1 service registered with the
v1alpha message classes.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

DESCRIPTOR_SET = "lakehouse_v1.binpb"
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


class _FileWithSourceInfo:
    """A file descriptor whose CopyToProto includes the source info (comments)."""

    def __init__(self, file: Any, protos: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._file = file
        self._protos = protos
        self.name: str = file.name

    @property
    def dependencies(self) -> list[_FileWithSourceInfo]:
        return [_FileWithSourceInfo(d, self._protos) for d in self._file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        source = self._protos.get(self.name)
        if source is not None:
            proto.CopyFrom(source)
        else:
            self._file.CopyToProto(proto)


class _CommentedPool:
    """The subset of DescriptorPool the reflection servicer calls."""

    def __init__(self, protos: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._pool = descriptor_pool.Default()
        self._protos = protos

    def FindFileByName(self, name: str) -> _FileWithSourceInfo:
        return _FileWithSourceInfo(self._pool.FindFileByName(name), self._protos)

    def FindFileContainingSymbol(self, symbol: str) -> _FileWithSourceInfo:
        return _FileWithSourceInfo(self._pool.FindFileContainingSymbol(symbol), self._protos)

    def FindMessageTypeByName(self, name: str) -> Any:
        return self._pool.FindMessageTypeByName(name)

    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return self._pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return self._pool.FindAllExtensions(message)


def _load_descriptor_set() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    data = resources.files("lakehouse.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    return {f.name: f for f in fds.file}


def _register_v1_file() -> None:
    """Adds ``grpc/reflection/v1/reflection.proto`` to the default pool (once).

    grpcio-reflection ships only v1alpha's file; without v1's, a client that lists the
    services and then describes each (grpcui, ``grpcurl describe``) would fail on v1's. It is
    v1alpha's file under v1's package, as upstream's v1 proto is.
    """
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name = _V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's are deprecated=true and its Java/Go packages
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):  # assigning "" would mark a scalar typed
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new, 1)
            method.output_type = method.output_type.replace(old, new, 1)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Registers server reflection, v1alpha and v1 (see the module docstring)."""
    _register_v1_file()
    servicer = reflection.aio.ReflectionServicer(
        [*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME],
        pool=_CommentedPool(_load_descriptor_set()),  # type: ignore[arg-type,unused-ignore]
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    v1_info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1_info}),)
    )
