"""Every element of the contract is documented by the comment above it, never beside it.

``buf lint``'s COMMENTS rules only ask for *a* leading comment: a field whose documentation
was written after it on the same line (a trailing comment) passes when the next line's
comment happens to sit above the next field, and then the generated docs give each field the
other's text. This reads the committed descriptor set (``make gen`` keeps source info) and
fails on any trailing comment or any message, field, enum, value, service or method without a
leading one.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

DESCRIPTOR_SET = Path(__file__).parents[2] / "gen" / "lakehouse" / "v1" / "lakehouse_v1.binpb"

# Paths into FileDescriptorProto (descriptor.proto's field numbers) of what must be documented.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM = 2, 3, 4
_VALUE, _METHOD = 2, 2


def _documented_paths(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    paths: dict[tuple[int, ...], str] = {}

    def enum(path: tuple[int, ...], proto: descriptor_pb2.EnumDescriptorProto, name: str) -> None:
        paths[path] = name
        for i, value in enumerate(proto.value):
            paths[(*path, _VALUE, i)] = f"{name}.{value.name}"

    def message(path: tuple[int, ...], proto: descriptor_pb2.DescriptorProto, name: str) -> None:
        paths[path] = name
        for i, field in enumerate(proto.field):
            paths[(*path, _FIELD, i)] = f"{name}.{field.name}"
        for i, nested in enumerate(proto.nested_type):
            if not nested.options.map_entry:
                message((*path, _NESTED, i), nested, f"{name}.{nested.name}")
        for i, nested_enum in enumerate(proto.enum_type):
            enum((*path, _NESTED_ENUM, i), nested_enum, f"{name}.{nested_enum.name}")

    for i, proto in enumerate(file.message_type):
        message((_MESSAGE, i), proto, proto.name)
    for i, enum_proto in enumerate(file.enum_type):
        enum((_ENUM, i), enum_proto, enum_proto.name)
    for i, service in enumerate(file.service):
        paths[(_SERVICE, i)] = service.name
        for j, method in enumerate(service.method):
            paths[(_SERVICE, i, _METHOD, j)] = f"{service.name}.{method.name}"
    return paths


def test_every_element_has_a_leading_comment_and_none_a_trailing_one() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    ours = [f for f in files if f.package == "lakehouse.v1"]
    assert ours, "no lakehouse.v1 file in the descriptor set"
    problems: list[str] = []
    for file in ours:
        locations = {tuple(loc.path): loc for loc in file.source_code_info.location}
        for path, name in _documented_paths(file).items():
            location = locations.get(path)
            if location is None or not location.leading_comments.strip():
                problems.append(f"{file.name}: {name} has no comment above it")
            elif location.trailing_comments.strip():
                problems.append(
                    f"{file.name}: {name} has a comment after it on its line "
                    f"({location.trailing_comments.strip()[:60]!r}): put it above the next one"
                )
    assert not problems, "\n".join(problems)
