"""Iceberg types as text, for people writing JSON: ``"decimal(12,2)"``, ``"list<string>"``.

The spelling is Iceberg's own (the table spec's type names, ``decimal(P,S)``, ``fixed[L]``,
``list<T>``, ``map<K,V>``, ``struct<name:T,...>``), limited to the types the lakehouse.v1
contract carries. pyiceberg parses only primitive type strings (its pydantic validator, and
leniently: a regex search, so ``"decimal(1,2)junk"`` passes), so nested types and strict
checking are done here, by a small recursive-descent parser.

Requiredness inside a type (a list's element, a map's value, a struct's field) is written as a
``not null`` suffix, as SQL engines spell it: ``list<long not null>``. A struct field name that
is not a plain identifier goes in backticks, a backtick inside doubled.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    PrimitiveType,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

MAX_DECIMAL_PRECISION = 38
#: The typed form's FixedType.length is an int32.
MAX_FIXED_LENGTH = 2**31 - 1
#: Deeper nesting is refused: it is never meant, and the parser recurses.
MAX_DEPTH = 32

_PRIMITIVE_NAMES: dict[str, type[PrimitiveType]] = {
    "boolean": BooleanType,
    "int": IntegerType,
    "long": LongType,
    "float": FloatType,
    "double": DoubleType,
    "date": DateType,
    "time": TimeType,
    "timestamp": TimestampType,
    "timestamptz": TimestamptzType,
    "string": StringType,
    "uuid": UUIDType,
    "binary": BinaryType,
}
_NAME_OF: dict[type[PrimitiveType], str] = {v: k for k, v in _PRIMITIVE_NAMES.items()}
_KNOWN = "boolean, int, long, float, double, decimal(P,S), date, time, timestamp, timestamptz, "
_KNOWN += "string, uuid, fixed[L], binary, list<T>, map<K,V> or struct<name:T,...>"

_TOKEN = re.compile(
    r"\s*(?:(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>\d+)"
    r"|(?P<quoted>`(?:[^`]|``)*`)|(?P<punct>[<>(),:\[\]]))"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TypeNameError(ValueError):
    """A type name that is not a valid spelling; the message says where and why."""


class _Parser:
    def __init__(self, text: str, ids: Iterator[int]) -> None:
        self.text = text
        self.ids = ids
        self.tokens: list[tuple[str, str, int]] = []
        position = 0
        stripped_end = len(text.rstrip())
        while position < stripped_end:
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise self._error(
                    position, f"unexpected character {text[position : position + 1]!r}"
                )
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind), match.start(kind)))
            position = match.end()
        self.index = 0

    def _error(self, position: int, what: str) -> TypeNameError:
        return TypeNameError(f"{what} at position {position} of {self.text!r}")

    def _peek(self) -> tuple[str, str, int]:
        if self.index < len(self.tokens):
            return self.tokens[self.index]
        return ("end", "", len(self.text))

    def _next(self) -> tuple[str, str, int]:
        token = self._peek()
        self.index += 1
        return token

    def _expect(self, punct: str) -> None:
        kind, value, position = self._next()
        if kind != "punct" or value != punct:
            found = "the end" if kind == "end" else repr(value)
            raise self._error(position, f"expected {punct!r}, found {found}")

    def _number(self) -> int:
        kind, value, position = self._next()
        if kind != "number":
            raise self._error(position, "expected a number")
        return int(value)

    def parse(self) -> IcebergType:
        result = self._type(0)
        kind, value, position = self._peek()
        if kind != "end":
            raise self._error(position, f"unexpected {value!r} after the type")
        return result

    def _not_null(self) -> bool:
        """Reads an optional ``not null`` suffix."""
        kind, value, _ = self._peek()
        if kind == "word" and value.lower() == "not":
            self.index += 1
            kind, value, position = self._next()
            if kind != "word" or value.lower() != "null":
                raise self._error(position, "expected 'null' after 'not'")
            return True
        return False

    def _type(self, depth: int) -> IcebergType:
        kind, value, position = self._next()
        if depth > MAX_DEPTH:
            raise self._error(position, f"types nest at most {MAX_DEPTH} deep")
        if kind != "word":
            found = "the end" if kind == "end" else repr(value)
            raise self._error(position, f"expected a type ({_KNOWN}), found {found}")
        name = value.lower()
        primitive = _PRIMITIVE_NAMES.get(name)
        if primitive is not None:
            return primitive()  # type: ignore[call-arg]  # pydantic root model, no args needed
        if name == "decimal":
            self._expect("(")
            precision = self._number()
            self._expect(",")
            scale = self._number()
            self._expect(")")
            if not 1 <= precision <= MAX_DECIMAL_PRECISION:
                raise self._error(position, f"decimal precision must be 1 to 38, got {precision}")
            if scale > precision:
                raise self._error(
                    position, f"decimal scale must be 0 to the precision {precision}, got {scale}"
                )
            return DecimalType(precision, scale)
        if name == "fixed":
            self._expect("[")
            length = self._number()
            self._expect("]")
            if not 0 < length <= MAX_FIXED_LENGTH:
                raise self._error(
                    position, f"fixed length must be 1 to {MAX_FIXED_LENGTH}, got {length}"
                )
            return FixedType(length)
        if name == "list":
            element_id = next(self.ids)
            self._expect("<")
            element = self._type(depth + 1)
            required = self._not_null()
            self._expect(">")
            return ListType(element_id, element, element_required=required)
        if name == "map":
            key_id, value_id = next(self.ids), next(self.ids)
            self._expect("<")
            key = self._type(depth + 1)
            self._expect(",")
            value_type = self._type(depth + 1)
            required = self._not_null()
            self._expect(">")
            return MapType(key_id, key, value_id, value_type, value_required=required)
        if name == "struct":
            return self._struct(depth)
        raise self._error(position, f"unknown type {value!r}: use {_KNOWN}")

    def _struct(self, depth: int) -> StructType:
        self._expect("<")
        fields: list[NestedField] = []
        while True:
            kind, value, position = self._next()
            if kind == "word":
                name = value
            elif kind == "quoted":
                name = value[1:-1].replace("``", "`")
            else:
                raise self._error(position, "expected a struct field name")
            if any(f.name.casefold() == name.casefold() for f in fields):
                raise self._error(
                    position,
                    f"duplicate struct field name {name!r} (names are compared case-insensitively)",
                )
            self._expect(":")
            field_id = next(self.ids)
            field_type = self._type(depth + 1)
            fields.append(NestedField(field_id, name, field_type, required=self._not_null()))
            kind, value, position = self._next()
            if kind == "punct" and value == ">":
                return StructType(*fields)
            if kind != "punct" or value != ",":
                found = "the end" if kind == "end" else repr(value)
                raise self._error(position, f"expected ',' or '>', found {found}")


def parse_type_name(text: str, ids: Iterator[int] | None = None) -> IcebergType:
    """Parses a type name such as ``"long"``, ``"decimal(12,2)"`` or ``"map<string,long>"``.

    Names are case-insensitive and may hold spaces between their parts, so pyiceberg's
    ``str()`` of a primitive, list or map type (``"decimal(12, 2)"``) parses back.

    Args:
        text: The type name.
        ids: Where the field ids of nested types come from (list elements, map keys and
            values, struct fields, in order); counts from 1 when not given.

    Returns:
        The Iceberg type.

    Raises:
        TypeNameError: The text is not a type this contract carries, with the position.
    """
    return _Parser(text, ids if ids is not None else itertools.count(1)).parse()


def type_name(t: IcebergType) -> str:
    """The canonical type name of an Iceberg type; ``parse_type_name`` reads it back.

    Raises:
        TypeNameError: The type has no lakehouse.v1 representation (e.g. timestamp_ns).
    """
    if isinstance(t, DecimalType):
        return f"decimal({t.precision},{t.scale})"
    if isinstance(t, FixedType):
        return f"fixed[{len(t)}]"
    if isinstance(t, ListType):
        return f"list<{type_name(t.element_type)}{_suffix(t.element_required)}>"
    if isinstance(t, MapType):
        key, value = type_name(t.key_type), type_name(t.value_type)
        return f"map<{key},{value}{_suffix(t.value_required)}>"
    if isinstance(t, StructType):
        fields = ",".join(
            f"{_field_name(f.name)}:{type_name(f.field_type)}{_suffix(f.required)}"
            for f in t.fields
        )
        return f"struct<{fields}>"
    name = _NAME_OF.get(type(t))  # type: ignore[arg-type]
    if name is None:
        raise TypeNameError(f"Iceberg type {t} has no lakehouse.v1 representation")
    return name


def _suffix(required: bool) -> str:
    return " not null" if required else ""


def _field_name(name: str) -> str:
    if _IDENTIFIER.fullmatch(name):
        return name
    return "`" + name.replace("`", "``") + "`"
