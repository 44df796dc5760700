"""What a failed read of an import source says: a domain error naming the source, never its bytes.

A missing or denied object is the user's bad URI (``InvalidArgument``); any other object
store failure is retryable (``Unavailable``). pyarrow's reader errors and row problems are
reworded to show the kind of problem and where, never a value of the file: a source may be
any file the service can read.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Iterator

import pyarrow as pa

from lakehouse.domain.errors import InvalidArgument, LakehouseError, Unavailable
from lakehouse.domain.rows.problems import RowErrorReason, RowProblem

_MISSING_HINTS = ("NoSuchBucket", "NO_SUCH_BUCKET", "NoSuchKey", "Path does not exist")
_DENIED_HINTS = ("ACCESS_DENIED", "AccessDenied", "[code 15]", "Forbidden")


def _object_store_error(exc: OSError, source_field: str, uri: str) -> LakehouseError:
    """An object store error: the user's mistake (InvalidArgument) or an outage (Unavailable).

    A missing object or a denied read is a bad URI the user gave, not something a retry
    fixes, hence INVALID_ARGUMENT naming the field (NOT_FOUND would read as "the job or table
    does not exist"). Anything else (connection refused, timeouts, 5xx) is retryable.
    """
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or any(h in text for h in _MISSING_HINTS):
        return InvalidArgument.field(source_field, f"{uri}: no such file")
    if isinstance(exc, PermissionError) or any(h in text for h in _DENIED_HINTS):
        return InvalidArgument.field(source_field, f"{uri}: access denied")
    if isinstance(exc, NotADirectoryError):
        return InvalidArgument.field(source_field, f"{uri}: is a file, not a folder")
    brief = text.splitlines()[0][:300] if text else type(exc).__name__
    return Unavailable(f"object store: reading {uri}: {brief}", reason="OBJECT_STORE_UNAVAILABLE")


@contextlib.contextmanager
def reading(source_field: str, uri: str, what: str) -> Iterator[None]:
    """Maps the errors of reading one source to domain errors naming it."""
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise InvalidArgument.field(
            source_field, f"{uri}: not readable as {what}: {_arrow_problem(exc)}"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link that appeared after the check
            raise InvalidArgument.field(
                source_field, f"{uri}: became a symbolic link while the import ran"
            ) from exc
        raise _object_store_error(exc, source_field, uri) from exc


# What pyarrow's reader errors say, minus the file content they quote ("CSV parse error:
# Expected 2 columns, got 3: <the whole line>"; "invalid value '<the value>'"): a source may
# be any file the service can read, so an error shows the kind of problem and where, never
# the bytes.
_ARROW_PROBLEMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Expected (\d+) columns, got (\d+)"), "a row has {2} fields, expected {1}"),
    (re.compile(r"conversion error to ([a-z0-9_\[\](), ]+?):"), "a value is not a valid {1}"),
    (re.compile(r"changed from (\w+) to (\w+)"), "a value changed from {1} to {2}"),
    (re.compile(r"JSON parse error: ([A-Za-z ,'{}\[\]-]{1,80})\."), "malformed JSON ({1})"),
    (re.compile(r"straddl"), "a record is longer than the parse block"),
    (re.compile(r"Parquet magic bytes not found"), "not a Parquet file (no Parquet footer)"),
    (re.compile(r"Unterminated|unterminated"), "an unterminated quoted value"),
)
_ARROW_WHERE = (
    (re.compile(r"Row #(\d+)"), "row {1}"),
    (re.compile(r"In CSV column #(\d+)"), "column #{1}"),
    (re.compile(r" in row (\d+)"), "row {1} of a parse block"),
)


def _arrow_problem(exc: Exception) -> str:
    """The kind of problem a pyarrow reader error reports and where, without any content."""
    text = str(exc)
    where = []
    for pattern, shown in _ARROW_WHERE:
        match = pattern.search(text)
        if match:
            where.append(shown.format(match.group(0), *match.groups()))
    for pattern, shown in _ARROW_PROBLEMS:
        match = pattern.search(text)
        if match:
            kind = shown.format(match.group(0), *match.groups())
            break
    else:
        kind = f"malformed ({type(exc).__name__})"
    return ": ".join([*where, kind])


#: A column name an error may quote: names of other shapes may be a line of the file (a CSV
#: header is the file's first line), so they are described instead.
_SHOWABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]{0,63}")


_SHOWABLE_TYPE = re.compile(r"[a-z][a-z0-9_\[\](), =/+:-]{0,59}")


def _name(column: str) -> str:
    return repr(column) if _SHOWABLE_NAME.fullmatch(column) else "(a name that is not shown)"


def row_problem(problem: RowProblem) -> str:
    """A row problem of a source file, in words that quote no value of it."""
    column = _name(problem.column)
    if problem.reason == RowErrorReason.UNKNOWN_COLUMN:
        return f"unknown column {column}: the table has no such column"
    if problem.reason == RowErrorReason.MISSING_REQUIRED_COLUMN:
        return f"required column {column} is missing or null"
    if problem.reason == RowErrorReason.TYPE_MISMATCH:
        # "column 'x': expected T, got <value>": the table's type stays, the value goes.
        head = f"column {problem.column!r}: expected "
        if problem.message.startswith(head):
            rest = problem.message[len(head) :]
            expected = re.split(r", got |; ", rest, maxsplit=1)[0]
            # The file's type of a column (the schema check) is no value: shown unless
            # nested (a struct's type names its fields, which may be any text).
            got = rest[len(expected) :].removeprefix(", got Arrow type ")
            shown = f", got Arrow type {got}" if _SHOWABLE_TYPE.fullmatch(got) else ""
            return f"column {column}: expected {expected[:100]}{shown}"
        return f"column {column}: a value of the wrong type"
    if problem.reason == RowErrorReason.VALUE_OUT_OF_RANGE:
        return f"column {column}: a value is out of range"
    return f"column {column}: {problem.reason.name.lower().replace('_', ' ')}"
