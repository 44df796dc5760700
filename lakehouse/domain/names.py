"""Validation of the names clients choose, written once.

Namespace and table names become path segments of object-store locations and identifiers in
SQL engines that share the catalog (Trino lower-cases identifiers), so they are restricted to
lowercase ASCII letters, digits and underscores. Column names are freer but may not contain
control characters or dots (pyiceberg addresses nested fields by dotted paths). Writer ids
are stored in table properties and logged: a short run of ASCII letters, digits, ``.``,
``_`` and ``-``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from lakehouse.domain.errors import InvalidArgument

MAX_NAME_LENGTH: Final = 128
#: A whole namespace or table name, length included (``lakehouse.config`` checks namespace
#: grants with it, so a grant can name exactly the namespaces the service accepts).
IDENTIFIER_PATTERN: Final = rf"[a-z_][a-z0-9_]{{0,{MAX_NAME_LENGTH - 1}}}"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_WRITER_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _describe_identifier_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters, got {len(value)}"
    if _IDENTIFIER.fullmatch(value):
        return None
    bad = next(
        (c for c in value if not (c.isascii() and (c.islower() or c.isdigit() or c == "_"))),
        None,
    )
    if bad is not None:
        return f"character {bad!r} is not allowed: use lowercase ASCII letters, digits and '_'"
    return "must not start with a digit"


def check_identifier(field: str, value: str) -> str:
    """Checks a namespace or table name.

    Args:
        field: The request field that carried the name (used in the error).
        value: The name.

    Returns:
        The name, unchanged.

    Raises:
        InvalidArgument: The name is empty, too long or has a character outside
            ``[a-z0-9_]`` (so no path separator, no ``..``, no control or Unicode tricks).
    """
    problem = _describe_identifier_problem(value)
    if problem is not None:
        raise InvalidArgument.field(field, problem, reason="INVALID_NAME")
    return value


def check_column_name(field: str, value: str) -> str:
    """Checks a column (or struct field) name.

    Raises:
        InvalidArgument: The name is empty, too long, has a dot, or a control or format
            character.
    """
    problem: str | None = None
    if not value:
        problem = "must not be empty"
    elif len(value) > MAX_NAME_LENGTH:
        problem = f"must be at most {MAX_NAME_LENGTH} characters, got {len(value)}"
    elif "." in value:
        problem = "must not contain '.'"
    elif value != value.strip():
        problem = "must not start or end with whitespace"
    else:
        bad = next((c for c in value if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co"}), None)
        if bad is not None:
            problem = f"must not contain control or format character U+{ord(bad):04X}"
    if problem is not None:
        raise InvalidArgument.field(field, problem, reason="INVALID_NAME")
    return value


def check_property_key(field: str, key: str) -> str:
    """Checks a namespace or table property key (non-empty, printable, bounded).

    Raises:
        InvalidArgument: The key is empty, longer than 256 characters or has control characters.
    """
    if not key or len(key) > 256 or any(unicodedata.category(c) == "Cc" for c in key):
        raise InvalidArgument.field(
            field,
            f"property key {key[:64]!r} must be 1 to 256 characters without control characters",
            reason="INVALID_PROPERTY",
        )
    return key


def check_writer_id(field: str, writer_id: str) -> str:
    """Checks a writer id: 1 to 128 ASCII letters, digits, '.', '_' or '-', not "." or "..".

    Raises:
        InvalidArgument: Otherwise (reason ``INVALID_WRITER_ID``).
    """
    if not _WRITER_ID.fullmatch(writer_id) or writer_id in {".", ".."}:
        raise InvalidArgument.field(
            field,
            "must be 1 to 128 ASCII letters, digits, '.', '_' or '-'",
            reason="INVALID_WRITER_ID",
        )
    return writer_id
