"""Server reflection that carries the contract's comments.

The descriptors compiled into ``*_pb2.py`` have no source info, so reflection alone would show
``grpcurl describe`` users bare fields. The descriptor set written by ``make gen`` keeps the
comments; this pool serves those file descriptors and delegates every lookup to the default
pool the generated modules registered into.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection

DESCRIPTOR_SET = "lakehouse_v1.binpb"


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


def enable_reflection(service_names: list[str], server: Any) -> None:
    """Registers server reflection (v1alpha, which grpcurl and buf curl fall back to)."""
    reflection.enable_server_reflection(
        [*service_names, reflection.SERVICE_NAME],
        server,
        pool=_CommentedPool(_load_descriptor_set()),  # type: ignore[arg-type]
    )
