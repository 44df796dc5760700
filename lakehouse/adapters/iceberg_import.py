"""The import_files job: append existing Parquet, CSV and JSON lines files to an Iceberg table.

Every function here blocks (pyiceberg, pyarrow's file systems) and runs in a worker thread.
An import goes in three passes, so that a bad file costs nothing but the time to find it:

1. **Check.** The sources are listed (a prefix) or looked up (a list of URIs), and each file's
   columns are checked against the table's schema: Parquet from its footer alone, CSV and JSON
   lines from their header or first block. The check reuses ``conform_arrow`` (the ingest
   path's rules of which Arrow types fit which Iceberg types) on a one-row probe of the file's
   schema, so an import accepts exactly what ``WriteRows`` accepts. A file that does not fit
   fails the job here, before anything is written.
2. **Write.** Parquet files whose schema is the table's exactly are registered in place: their
   footer becomes a ``DataFile`` and nothing is copied. Every other file is read in bounded
   batches, conformed (the same casts ``WriteRows`` makes, every value checked) and written
   as new data files under the table's location.
3. **Commit.** All data files land in one ``fast_append``: one snapshot, all or nothing. Its
   summary records the job id and the counts; a retried attempt that finds its job id in a
   snapshot returns that outcome instead of importing twice (a worker may die after the commit
   and before it records success).

A file registered in place becomes the table's: Iceberg deletes data files that no snapshot
references any more, so once a later compaction has replaced the file and the old snapshots
have expired, ``expire_snapshots`` deletes the source file itself. That is Iceberg's
``add_files`` contract (Spark's and pyiceberg's alike).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import itertools
import logging
import os
import posixpath
import re
import unicodedata
import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.fs as pa_fs
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    PyArrowFileIO,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestContent
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import AssertCurrentSchemaId, AssertDefaultSpecId
from pyiceberg.types import IcebergType, ListType, MapType, NestedField, StructType
from pyiceberg.utils.properties import property_as_int

from lakehouse.adapters.iceberg import translate_errors
from lakehouse.adapters.iceberg_maintenance import normalize_uri
from lakehouse.adapters.pyiceberg_private import writable_table, write_data_files
from lakehouse.domain.errors import (
    CommitStateUnknown,
    FieldViolation,
    InvalidArgument,
    LakehouseError,
    Unavailable,
)
from lakehouse.domain.ingest_rows import DecodedRows, RowErrorReason, RowProblem, conform_arrow
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.schemas import schema_to_arrow

logger = logging.getLogger(__name__)

#: The most files one job imports, listed or named: every one becomes a manifest entry of a
#: single commit, and its schema check is a request to the object store.
MAX_SOURCE_FILES = 10_000
#: Longest source URI accepted (S3 keys are at most 1024 bytes).
MAX_URI_LENGTH = 2_048
#: The setting that lists the prefixes imports may read, named in refusals.
IMPORT_PREFIXES_SETTING = "jobs.import_prefixes"
#: Request fields, relative to the job spec (the service prefixes ``spec.``).
PREFIX_FIELD = "import_files.source_prefix"
URIS_FIELD = "import_files.source_uris"
FORMAT_FIELD = "import_files.format"

#: Snapshot summary keys of an import commit.
JOB_ID_KEY = "lakehouse.job-id"
OPERATION_KEY = "lakehouse.operation"
FILES_IMPORTED_KEY = "lakehouse.import.files-imported"
FILES_REGISTERED_KEY = "lakehouse.import.files-registered"
FILES_REWRITTEN_KEY = "lakehouse.import.files-rewritten"
ROWS_IMPORTED_KEY = "lakehouse.import.rows-imported"

#: CSV and JSON lines are parsed in blocks of this size; a JSON line must fit in one.
TEXT_BLOCK_BYTES = 16 * 1024 * 1024
#: The check pass parses only the first block of a text file; a small one keeps it cheap.
_CHECK_BLOCK_BYTES = 1024 * 1024
#: Rows per batch read from a Parquet file being rewritten.
PARQUET_BATCH_ROWS = 64 * 1024
#: Conformed rows are buffered up to this many Arrow bytes before they are written out: the
#: bound on memory, and on the size of the files written (before compression).
WRITE_CHUNK_BYTES = 128 * 1024 * 1024

_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst")  # what pyarrow's "detect" decompresses
_MAX_VIOLATIONS = 100
# An S3 bucket name as AWS and S3-compatible stores accept it (also checked by RegisterTable).
S3_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_UTC_NAMES = frozenset({"UTC", "+00:00", "Etc/UTC", "Z"})
_FIELD_ID_KEY = b"PARQUET:field_id"
_MISSING_HINTS = ("NoSuchBucket", "NO_SUCH_BUCKET", "NoSuchKey", "Path does not exist")
_DENIED_HINTS = ("ACCESS_DENIED", "AccessDenied", "[code 15]", "Forbidden")


class ImportFormat(enum.IntEnum):
    """The format of the files to import (the values of ``lakehouse.v1.FileFormat``)."""

    UNSPECIFIED = 0
    PARQUET = 1
    CSV = 2
    JSON_LINES = 3


_FORMAT_NAMES = {
    ImportFormat.PARQUET: "Parquet",
    ImportFormat.CSV: "CSV",
    ImportFormat.JSON_LINES: "JSON lines",
}
_EXTENSIONS = {
    ".parquet": ImportFormat.PARQUET,
    ".csv": ImportFormat.CSV,
    ".json": ImportFormat.JSON_LINES,
    ".jsonl": ImportFormat.JSON_LINES,
    ".ndjson": ImportFormat.JSON_LINES,
}


@dataclass(frozen=True)
class ImportOutcome:
    """What an import committed (mirrors ``lakehouse.v1.ImportFilesJobResult``).

    Attributes:
        files_imported: Files imported, registered or rewritten.
        files_registered: Parquet files registered in place, without copying.
        files_rewritten: Files read and written as new data files (files without rows count
            here too, though they add no data file).
        rows_imported: Rows added to the table.
        snapshot_id: The snapshot committed; None when no file was found or no file held a row.
    """

    files_imported: int
    files_registered: int
    files_rewritten: int
    rows_imported: int
    snapshot_id: int | None


_NOTHING = ImportOutcome(0, 0, 0, 0, None)


# -- Source URIs --------------------------------------------------------------------------------


def _shown(uri: str) -> str:
    """A URI as an error message quotes it: repr() (control characters escaped), shortened."""
    text = repr(uri)
    return text if len(text) <= 200 else text[:197] + "..."


def canonical_uri(uri: str, *, folder: bool) -> str:
    """The one spelling of a source URI that prefix checks compare, or why it is refused.

    Only ``s3://bucket/key`` and ``file:///absolute/path`` are accepted (``s3a://`` and
    ``s3n://`` are Hadoop spellings no user of this API needs). Refused: control characters,
    ``?`` and ``#`` (pyiceberg would cut the path there), ``..`` segments (raw or
    percent-encoded: they could climb out of an allowed prefix), an S3 host that is not a
    bucket name, and a ``file://`` URI with a host. Local paths are normalized (``//`` and
    ``.``); S3 keys are kept as they are, since ``a//b`` and ``a/b`` are different keys.

    Args:
        uri: The URI as the user sent it.
        folder: True for a prefix: the result ends with ``/``, so that ``s3://landing/orders``
            admits ``s3://landing/orders/x`` and never ``s3://landing/orders-evil/x``.

    Returns:
        The canonical URI.

    Raises:
        ValueError: Why the URI is refused, phrased for a field violation.
    """
    if not uri:
        raise ValueError("must not be empty")
    if len(uri) > MAX_URI_LENGTH:
        raise ValueError(f"must be at most {MAX_URI_LENGTH} characters")
    if any(unicodedata.category(c) == "Cc" for c in uri):
        raise ValueError(f"{_shown(uri)} must not contain control characters")
    if "?" in uri or "#" in uri:
        raise ValueError(f"{_shown(uri)} must not contain '?' or '#' (a query or fragment)")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise ValueError(f"{_shown(uri)} is not a valid URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("s3", "file"):
        raise ValueError(f"{_shown(uri)} must be an s3:// or file:// URI")
    segments = parts.path.split("/")
    if any(s == ".." or unquote(s) == ".." for s in segments):
        raise ValueError(f"{_shown(uri)} must not contain '..' segments")
    if scheme == "s3":
        if not S3_BUCKET_NAME.fullmatch(parts.netloc) or ".." in parts.netloc:
            raise ValueError(f"{_shown(uri)} must name a bucket: s3://bucket/key")
        key = parts.path[1:]
        if not folder and (not key or key.endswith("/")):
            raise ValueError(f"{_shown(uri)} must name an object, not a folder")
        canonical = f"s3://{parts.netloc}/{key}"
    else:
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"{_shown(uri)} must be file:///absolute/path, without a host")
        if not folder and parts.path.endswith("/"):
            raise ValueError(f"{_shown(uri)} must name a file, not a folder")
        canonical = "file://" + posixpath.normpath("/" + parts.path.lstrip("/"))
    if folder and not canonical.endswith("/"):
        canonical += "/"
    return canonical


def _allowed_prefixes(prefixes: Sequence[str]) -> list[str]:
    """The configured prefixes in canonical folder form; a malformed one admits nothing."""
    out = []
    for prefix in prefixes:
        try:
            out.append(canonical_uri(prefix, folder=True))
        except ValueError:
            logger.warning("ignoring malformed %s entry %r", IMPORT_PREFIXES_SETTING, prefix)
    return out


def _invalid(violations: list[FieldViolation]) -> InvalidArgument:
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return InvalidArgument(
        f"{first.field}: {first.description}{more}", violations=violations[:_MAX_VIOLATIONS]
    )


def _checked_sources(
    source_prefix: str, source_uris: Sequence[str], allowed_prefixes: Sequence[str] | None
) -> list[tuple[str, str]]:
    """Checks the sources; returns (field, canonical URI) of each. None skips the allow-list."""
    if source_prefix and source_uris:
        raise InvalidArgument.field(URIS_FIELD, "set source_prefix or source_uris, not both")
    if not source_prefix and not source_uris:
        raise InvalidArgument.field(PREFIX_FIELD, "set source_prefix or source_uris")
    if len(source_uris) > MAX_SOURCE_FILES:
        raise InvalidArgument.field(
            URIS_FIELD,
            f"at most {MAX_SOURCE_FILES} URIs per job ({len(source_uris)} given); "
            "split the import or use source_prefix",
        )
    items = (
        [(PREFIX_FIELD, source_prefix, True)]
        if source_prefix
        else [(f"{URIS_FIELD}[{i}]", uri, False) for i, uri in enumerate(source_uris)]
    )
    allowed = _allowed_prefixes(allowed_prefixes) if allowed_prefixes is not None else None
    violations: list[FieldViolation] = []
    seen: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for field_name, uri, folder in items:
        try:
            canonical = canonical_uri(uri, folder=folder)
        except ValueError as exc:
            violations.append(FieldViolation(field_name, str(exc)))
            continue
        if allowed is not None and not allowed:
            violations.append(
                FieldViolation(
                    field_name,
                    f"imports are disabled: the setting {IMPORT_PREFIXES_SETTING} lists no "
                    "prefix to import from",
                )
            )
        elif allowed is not None and not any(canonical.startswith(a) for a in allowed):
            violations.append(
                FieldViolation(
                    field_name,
                    f"{_shown(uri)} is not under any prefix the setting "
                    f"{IMPORT_PREFIXES_SETTING} allows",
                )
            )
        elif canonical in seen:
            violations.append(
                FieldViolation(field_name, f"names the same file as {seen[canonical]}")
            )
        else:
            seen[canonical] = field_name
            out.append((field_name, canonical))
    if violations:
        raise _invalid(violations)
    return out


def check_source_uris(
    source_prefix: str, source_uris: Sequence[str], allowed_prefixes: Sequence[str]
) -> None:
    """Checks an import's sources at ``CreateJob`` time, so a bad request creates no job.

    Exactly one of ``source_prefix`` and ``source_uris`` must be set; at most
    ``MAX_SOURCE_FILES`` URIs, each well-formed (see ``canonical_uri``), named once, and
    under one of ``allowed_prefixes``. Prefixes compare as folders: an allowed
    ``s3://landing/orders/`` admits neither ``s3://landing/orders-evil/x`` nor
    ``s3://landing-evil/``. Whether the files exist is only known when the job runs.

    Args:
        source_prefix: The spec's source_prefix ("" when unset).
        source_uris: The spec's source_uris.
        allowed_prefixes: The ``jobs.import_prefixes`` setting; empty refuses every import.

    Raises:
        InvalidArgument: With one field violation per bad URI
            (``import_files.source_prefix`` or ``import_files.source_uris[i]``).
    """
    _checked_sources(source_prefix, source_uris, allowed_prefixes)


# -- Listing and reading sources ----------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """One file to import: where it is, what it is, and the request field that named it."""

    field: str
    uri: str
    path: str  # the path pyarrow's file system takes ("bucket/key" or "/abs/path")
    fs: pa_fs.FileSystem
    size: int
    format: ImportFormat
    local: bool = False
    """A local file: ``path`` is its resolved real path, opened without following links."""
    guard: tuple[str, ...] | None = None
    """For a local file, the resolved allowed folders it must still lie in when opened
    (None: no allow-list to check)."""

    @property
    def label(self) -> str:
        return _FORMAT_NAMES[self.format]


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
def _reading(source_field: str, uri: str, what: str) -> Iterator[None]:
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


def _row_problem(problem: RowProblem) -> str:
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


class _Files:
    """The table's object store, through pyarrow file systems with the catalog's settings.

    pyiceberg's ``PyArrowFileIO`` builds (and caches) an S3 file system from the catalog's
    ``s3.*`` properties, so sources are read with the same endpoint and credentials as the
    table's own files.
    """

    def __init__(self, io: FileIO, allowed_prefixes: Sequence[str] | None = None) -> None:
        self._io = io if isinstance(io, PyArrowFileIO) else PyArrowFileIO(io.properties)
        self._guard = _local_guard(allowed_prefixes)

    def locate(self, uri: str) -> tuple[pa_fs.FileSystem, str]:
        scheme, netloc, path = PyArrowFileIO.parse_location(uri, self._io.properties)
        return self._io.fs_by_scheme(scheme, netloc), path

    def _resolved(self, field_name: str, uri: str, path: str) -> str:
        """The real path of a local source, refused unless it lies in an allowed folder.

        The URI's own spelling passed the prefix check; a symbolic link anywhere on its path
        may still lead elsewhere (a link to /etc/passwd, a linked folder). Resolved once
        here; the file is then opened by this path without following links.

        Raises:
            InvalidArgument: The real path is outside every allowed folder.
        """
        real = os.path.realpath(path)
        if self._guard is not None and not _inside(real, self._guard):
            raise InvalidArgument.field(
                field_name,
                f"{_shown(uri)} leads outside every prefix the setting "
                f"{IMPORT_PREFIXES_SETTING} allows (through a symbolic link)",
            )
        return real

    def expand(
        self, sources: list[tuple[str, str]], prefix: bool, requested: ImportFormat
    ) -> list[_Source]:
        """The files to import: each URI looked up, or every visible file under the prefix."""
        if prefix:
            ((field_name, uri),) = sources
            return self._list(field_name, uri, requested)
        out: list[_Source] = []
        seen: dict[str, str] = {}
        for field_name, uri in sources:
            source = self._stat(field_name, uri, requested)
            if source.uri in seen:  # a link and its target, named once each
                raise InvalidArgument.field(
                    field_name, f"names the same file as {seen[source.uri]} (through a link)"
                )
            seen[source.uri] = field_name
            out.append(source)
        return out

    def _stat(self, field_name: str, uri: str, requested: ImportFormat) -> _Source:
        fs, path = self.locate(uri)
        local = urlsplit(uri).scheme == "file"
        if local:
            path = self._resolved(field_name, uri, path)
        with _reading(field_name, uri, "a file"):
            info = fs.get_file_info(path)
        if info.type == pa_fs.FileType.NotFound:
            raise InvalidArgument.field(field_name, f"{uri}: no such file")
        if info.type != pa_fs.FileType.File:
            raise InvalidArgument.field(
                field_name, f"{uri}: is a folder, not a file; use source_prefix to import a folder"
            )
        fmt = _format_of(uri, requested, field_name)
        if local:
            uri = "file://" + path  # registered in place, the real path is what is read
        return _Source(field_name, uri, path, fs, int(info.size or 0), fmt, local, self._guard)

    def _list(self, field_name: str, prefix: str, requested: ImportFormat) -> list[_Source]:
        fs, path = self.locate(prefix)
        scheme = urlsplit(prefix).scheme
        if scheme == "file":
            base = self._resolved(field_name, prefix, path.rstrip("/") or "/").rstrip("/")
            with _reading(field_name, prefix, "a folder"):
                infos = self._walk_local(field_name, base)
        else:
            base = path.rstrip("/")
            selector = pa_fs.FileSelector(base, recursive=True, allow_not_found=True)
            with _reading(field_name, prefix, "a folder"):
                infos = [(str(i.path), i) for i in fs.get_file_info(selector)]
        out = []
        for listed, info in sorted(infos, key=lambda i: i[0]):
            # Folders and zero-byte objects (S3 "folder/" markers, "_SUCCESS") hold no rows.
            if info.type != pa_fs.FileType.File or not info.size:
                continue
            relative = listed[len(base) :].lstrip("/")
            if _hidden(relative):
                continue
            uri = f"s3://{info.path}" if scheme == "s3" else f"file://{info.path}"
            fmt = _format_of(uri, requested, field_name)
            out.append(
                _Source(
                    field_name,
                    uri,
                    str(info.path),
                    fs,
                    int(info.size),
                    fmt,
                    scheme == "file",
                    self._guard,
                )
            )
            if len(out) > MAX_SOURCE_FILES:
                raise InvalidArgument.field(
                    field_name,
                    f"{prefix} holds more than {MAX_SOURCE_FILES} files; import it in parts",
                )
        return out

    def _walk_local(self, field_name: str, base: str) -> list[tuple[str, pa_fs.FileInfo]]:
        """The files under a local folder, as (path as listed, info of its real file).

        Walked without following links to folders (pyarrow's recursive listing follows
        them, out of the prefix too); a linked folder, or a linked file whose target is
        outside every allowed folder, is refused. A link to a file inside them is listed
        by its own path and read from its target.

        Raises:
            InvalidArgument: A link leads outside the allowed folders, or to a folder.
        """
        listed: list[tuple[str, pa_fs.FileInfo]] = []
        seen: set[str] = set()  # a link and its target: one file, imported once
        if not os.path.isdir(base):
            if os.path.exists(base):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder")  # as pyarrow says it
            return listed  # a prefix nothing was put under yet
        for folder, dirs, files in os.walk(base, followlinks=False):
            for name in dirs:
                linked = os.path.join(folder, name)
                if os.path.islink(linked) and not _hidden(linked[len(base) :].lstrip("/")):
                    raise InvalidArgument.field(
                        field_name,
                        f"{_shown('file://' + linked)} is a symbolic link to a folder; "
                        "imports do not follow them",
                    )
            for name in files:
                path = os.path.join(folder, name)
                if _hidden(path[len(base) :].lstrip("/")):
                    continue  # skipped by the caller anyway, wherever it points
                real = self._resolved(field_name, "file://" + path, path)
                try:
                    stat = os.stat(real)
                except FileNotFoundError:  # a dangling link, or deleted since the walk
                    continue
                if real in seen:
                    continue
                seen.add(real)
                kind = pa_fs.FileType.File if os.path.isfile(real) else pa_fs.FileType.Unknown
                listed.append((path, pa_fs.FileInfo(real, kind, size=stat.st_size)))
            if len(listed) > MAX_SOURCE_FILES:
                break  # the caller refuses the folder as too large
        return listed


def _local_guard(allowed_prefixes: Sequence[str] | None) -> tuple[str, ...] | None:
    """The real paths of the allowed ``file://`` prefixes (None: no allow-list to check)."""
    if allowed_prefixes is None:
        return None
    guard = []
    for prefix in _allowed_prefixes(allowed_prefixes):
        if prefix.startswith("file://"):
            real = os.path.realpath(prefix[len("file://") :])
            guard.append(real.rstrip("/") + "/")
    return tuple(guard)


def _inside(real: str, guard: Sequence[str]) -> bool:
    """Whether a resolved path is, or lies in, one of the resolved allowed folders."""
    as_folder = real.rstrip("/") + "/"
    return any(as_folder.startswith(folder) for folder in guard)


_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}  # what pyarrow's "detect" picks


@contextlib.contextmanager
def _local_fd(source: _Source) -> Iterator[str]:
    """A path that reopens exactly the file checked: ``/proc/self/fd/N`` of a no-follow open.

    ``source.path`` is already resolved; ``O_NOFOLLOW`` refuses a link put in its place
    since, and the descriptor's own path (``/proc/self/fd/N`` names the opened file, not a
    path that could be swapped) is checked against the allowed folders once more, so a
    folder on the way that became a link is caught too.

    Raises:
        OSError: ``ELOOP`` when the file became a link; others as ``open`` raises them.
        InvalidArgument: The opened file lies outside the allowed folders.
    """
    fd = os.open(source.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        proc = f"/proc/self/fd/{fd}"
        if not os.path.exists(proc):  # no /proc (not Linux): the checked path it is
            yield source.path
            return
        if source.guard is not None and not _inside(os.readlink(proc), source.guard):
            raise InvalidArgument.field(
                source.field,
                f"{_shown(source.uri)} leads outside every prefix the setting "
                f"{IMPORT_PREFIXES_SETTING} allows (it was moved while the import ran)",
            )
        yield proc
    finally:
        os.close(fd)


@contextlib.contextmanager
def _input_file(source: _Source) -> Iterator[pa.NativeFile]:
    """The source opened for random access (Parquet footers)."""
    if not source.local:
        with source.fs.open_input_file(source.path) as f:
            yield f
        return
    with _local_fd(source) as path, pa.OSFile(path, "rb") as f:
        yield f


@contextlib.contextmanager
def _input_stream(source: _Source) -> Iterator[pa.NativeFile]:
    """The source opened as a stream, decompressed by its extension (.gz, .bz2, .zst)."""
    if not source.local:
        # open_input_stream decompresses .gz, .bz2 and .zst files by their extension.
        with source.fs.open_input_stream(source.path) as stream:
            yield stream
        return
    codec = _CODECS.get(posixpath.splitext(source.path)[1].lower())
    with _local_fd(source) as path, pa.OSFile(path, "rb") as raw:
        if codec is None:
            yield raw
        else:
            with pa.CompressedInputStream(raw, codec) as stream:
                yield stream


def _hidden(relative: str) -> bool:
    """Whether a listed file is one that writers leave for themselves.

    Spark's ``_SUCCESS`` and ``_temporary/``, Hadoop's ``.crc`` checksums, editors' dot files:
    any path segment below the prefix starting with ``_`` or ``.`` hides the file.
    """
    segments = relative.split("/")
    return any(s.startswith(("_", ".")) for s in segments) or relative.endswith(".crc")


def _format_of(uri: str, requested: ImportFormat, field_name: str) -> ImportFormat:
    if requested != ImportFormat.UNSPECIFIED:
        return requested
    name = uri.rsplit("/", 1)[-1].lower()
    compressed = name.endswith(_COMPRESSED_SUFFIXES)
    if compressed:
        name = name.rsplit(".", 1)[0]
    fmt = _EXTENSIONS.get(posixpath.splitext(name)[1])
    if fmt is None or (compressed and fmt == ImportFormat.PARQUET):
        raise InvalidArgument.field(
            field_name,
            f"{uri}: cannot tell the format from the file name; name files .parquet, .csv, "
            ".json, .jsonl or .ndjson (CSV and JSON optionally .gz, .bz2 or .zst), or set format",
        )
    return fmt


# -- Text formats: what Arrow's readers are told ------------------------------------------------


def _csv_type(t: pa.DataType) -> pa.DataType:
    """The type pyarrow's CSV reader parses a table column as.

    Types the CSV reader parses natively are requested as the table's own type (so values are
    checked as they are parsed); anything else is read as text, and ``conform_arrow`` then
    casts it or refuses the column (nested, binary and UUID columns cannot come from CSV).
    """
    native = (
        pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string(t)
        or pa.types.is_date32(t)
        or pa.types.is_time64(t)
        or pa.types.is_timestamp(t)
    )
    return t if native else pa.large_string()


def _json_type(t: pa.DataType) -> pa.DataType | None:
    """The type pyarrow's JSON reader parses a table column as; None lets it infer.

    Explicit types keep the reader from inferring a column's type from its first block (and
    failing when a later block disagrees). Numbers, booleans and text are parsed as the
    table's types (pyarrow refuses lossy numbers). Dates and timestamps are read as text and
    cast by ``conform_arrow``: the JSON reader would take a naive time for UTC, where the
    service's rule is that ``timestamptz`` needs an offset and ``timestamp`` takes none. Maps
    (JSON objects with any keys) are left to inference, which makes a struct that
    ``conform_arrow`` refuses: maps cannot come from JSON lines.
    """
    if (
        pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string(t)
    ):
        return t
    if pa.types.is_struct(t):
        children = [(t.field(i).name, _json_type(t.field(i).type)) for i in range(t.num_fields)]
        return pa.struct([(name, ct) for name, ct in children if ct is not None])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        element = _json_type(t.value_type)
        return pa.list_(element) if element is not None else None
    if pa.types.is_map(t):
        return None
    return pa.string()


class _Reader:
    """Opens sources as Arrow: schema for the check pass, record batches for the write pass."""

    def __init__(self, table_arrow: pa.Schema) -> None:
        self._csv_types = {f.name: _csv_type(f.type) for f in table_arrow}
        json_fields = [(f.name, _json_type(f.type)) for f in table_arrow]
        self._json_schema = pa.schema([(n, t) for n, t in json_fields if t is not None])

    def _open(self, source: _Source, stream: pa.NativeFile, block: int) -> pa.RecordBatchReader:
        """A streaming reader of a CSV or JSON lines file, parsing ``block`` bytes at a time."""
        if source.format == ImportFormat.CSV:
            return pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(block_size=block),
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                # Like PostgreSQL's COPY: an empty unquoted field is null, "" is the empty
                # string, and no other spelling ("NA", "null") is taken for null.
                convert_options=pa_csv.ConvertOptions(
                    column_types=self._csv_types,
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                ),
            )
        return pa_json.open_json(
            stream,
            read_options=pa_json.ReadOptions(block_size=block),
            parse_options=pa_json.ParseOptions(
                explicit_schema=self._json_schema, unexpected_field_behavior="infer"
            ),
        )

    def schema(self, source: _Source) -> tuple[pa.Schema, pq.FileMetaData | None]:
        """The file's Arrow schema (and the Parquet footer), reading as little as possible.

        A text file's schema comes from its first block, parsed small; only a first record
        longer than that block makes it read again with the full block size.
        """
        if source.format == ImportFormat.PARQUET:
            with _input_file(source) as f:
                metadata = pq.read_metadata(f)
            return metadata.schema.to_arrow_schema(), metadata
        for block in (_CHECK_BLOCK_BYTES, TEXT_BLOCK_BYTES):
            with _input_stream(source) as stream:
                try:
                    reader = self._open(source, stream, block)
                except pa.ArrowInvalid as exc:
                    if block == TEXT_BLOCK_BYTES or "straddl" not in str(exc):
                        raise
                    continue
                with contextlib.closing(reader):
                    return reader.schema, None
        raise AssertionError("unreachable")  # pragma: no cover

    def batches(self, source: _Source) -> Generator[pa.RecordBatch, None, None]:
        """The file's rows in batches of bounded size."""
        if source.format == ImportFormat.PARQUET:
            with _input_file(source) as f:
                yield from pq.ParquetFile(f).iter_batches(batch_size=PARQUET_BATCH_ROWS)
            return
        with (
            _input_stream(source) as stream,
            contextlib.closing(self._open(source, stream, TEXT_BLOCK_BYTES)) as reader,
        ):
            yield from reader


# -- The schema check ---------------------------------------------------------------------------


def _relaxed_type(t: IcebergType) -> IcebergType:
    if isinstance(t, StructType):
        return StructType(*(_relaxed_field(f) for f in t.fields))
    if isinstance(t, ListType):
        return ListType(t.element_id, _relaxed_type(t.element_type), element_required=False)
    if isinstance(t, MapType):
        return MapType(
            t.key_id, t.key_type, t.value_id, _relaxed_type(t.value_type), value_required=False
        )
    return t


def _relaxed_field(f: NestedField) -> NestedField:
    return NestedField(f.field_id, f.name, _relaxed_type(f.field_type), required=False)


def _relaxed(schema: Schema) -> Schema:
    """The schema with every field optional.

    A probe of nulls checked against it reports type and name problems only: required
    columns are checked by name, and their values when the rows are read.
    """
    return Schema(*(_relaxed_field(f) for f in schema.fields), schema_id=schema.schema_id)


def _probe_key(t: pa.DataType) -> pa.Array | None:
    """One non-null value of a map key type (Arrow maps refuse null keys), if easy to make."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.array([""], t)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.array([b""], t)
    if pa.types.is_fixed_size_binary(t):
        return pa.array([bytes(t.byte_width)], t)
    try:
        return pc.cast(pa.array([0], pa.int32()), t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def _probe(t: pa.DataType) -> pa.Array:
    """One row of type ``t``: containers present (so their children get checked), leaves null."""
    if pa.types.is_dictionary(t):
        return _probe(t.value_type)
    if pa.types.is_struct(t):
        fields = [t.field(i) for i in range(t.num_fields)]
        return pa.StructArray.from_arrays([_probe(f.type) for f in fields], fields=fields)
    if pa.types.is_list(t):
        return pa.ListArray.from_arrays(pa.array([0, 1], pa.int32()), _probe(t.value_type), type=t)
    if pa.types.is_large_list(t):
        offsets = pa.array([0, 1], pa.int64())
        return pa.LargeListArray.from_arrays(offsets, _probe(t.value_type), type=t)
    if pa.types.is_map(t):
        key = _probe_key(t.key_type)
        if key is not None:
            offsets = pa.array([0, 1], pa.int32())
            return pa.MapArray.from_arrays(offsets, key, _probe(t.item_type), type=t)
    return pa.nulls(1, t)


def _missing_required(
    fields: Sequence[pa.Field], iceberg_fields: Sequence[NestedField], path: str
) -> str | None:
    """The dotted path of the first required table column the file lacks, if any."""
    present = {f.name: f for f in fields}
    for nested in iceberg_fields:
        where = f"{path}.{nested.name}" if path else nested.name
        found = present.get(nested.name)
        if found is None:
            if nested.required:
                return where
            continue
        t, it = found.type, nested.field_type
        if isinstance(it, StructType) and pa.types.is_struct(t):
            inner = _missing_required(list(t), it.fields, where)
        elif (
            isinstance(it, ListType)
            and isinstance(it.element_type, StructType)
            and (pa.types.is_list(t) or pa.types.is_large_list(t))
            and pa.types.is_struct(t.value_type)
        ):
            inner = _missing_required(
                list(t.value_type), it.element_type.fields, f"{where}.element"
            )
        else:
            inner = None
        if inner is not None:
            return inner
    return None


class _SchemaCheck:
    """Whether a file's columns fit the table.

    Every name known, every type castable, every required column present: the rules are
    ``conform_arrow``'s, the ingest path's own, so an import accepts what WriteRows accepts.
    """

    def __init__(self, schema: Schema) -> None:
        self._schema = schema
        self._relaxed = _relaxed(schema)

    def check(self, source: _Source, file_schema: pa.Schema) -> None:
        probe = pa.Table.from_arrays(
            [_probe(f.type) for f in file_schema], names=list(file_schema.names)
        )
        decoded = conform_arrow(probe, self._relaxed)
        if decoded.problems:
            problem = decoded.problems[0]
            raise InvalidArgument.field(source.field, f"{source.uri}: {_row_problem(problem)}")
        missing = _missing_required(list(file_schema), self._schema.fields, "")
        if missing is not None:
            raise InvalidArgument.field(
                source.field, f"{source.uri}: required column {missing!r} is missing"
            )


# -- Registration in place ----------------------------------------------------------------------


def _has_field_ids(fields: Sequence[pa.Field]) -> bool:
    for f in fields:
        if f.metadata and _FIELD_ID_KEY in f.metadata:
            return True
        t = f.type
        if pa.types.is_struct(t) and _has_field_ids(list(t)):
            return True
        if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _has_field_ids([t.value_field]):
            return True
        if pa.types.is_map(t) and _has_field_ids([t.key_field, t.item_field]):
            return True
    return False


def _plain(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t


def _same_type(file_type: pa.DataType, table_type: pa.DataType) -> bool:
    """True when a file column holds the table column's type as Iceberg writes it, no cast.

    Offsets width (``string``/``large_string``, ``list``/``large_list``) is a reader detail,
    not a type difference. Timestamps must be microseconds (Iceberg's unit: a Parquet
    ``TIMESTAMP_MILLIS`` column would be misread by engines that trust the table type).
    """
    if pa.types.is_struct(table_type):
        return pa.types.is_struct(file_type) and _same_fields(list(file_type), list(table_type))
    if pa.types.is_large_list(table_type) or pa.types.is_list(table_type):
        return (pa.types.is_list(file_type) or pa.types.is_large_list(file_type)) and _fits(
            file_type.value_field, table_type.value_field
        )
    if pa.types.is_map(table_type):
        return (
            pa.types.is_map(file_type)
            and _same_type(file_type.key_type, table_type.key_type)
            and _fits(file_type.item_field, table_type.item_field)
        )
    if pa.types.is_timestamp(table_type):
        if not pa.types.is_timestamp(file_type) or file_type.unit != "us":
            return False
        if table_type.tz is None:
            return file_type.tz is None
        return file_type.tz in _UTC_NAMES
    return bool(_plain(file_type) == _plain(table_type))


def _fits(file_field: pa.Field, table_field: pa.Field) -> bool:
    # An optional file column may hold nulls a required table column must not: rewrite it,
    # so that conform_arrow checks every value.
    nullable_ok = table_field.nullable or not file_field.nullable
    return nullable_ok and _same_type(file_field.type, table_field.type)


def _same_fields(file_fields: Sequence[pa.Field], table_fields: Sequence[pa.Field]) -> bool:
    by_name = {f.name: f for f in file_fields}
    if len(by_name) != len(file_fields) or set(by_name) != {f.name for f in table_fields}:
        return False
    return all(_fits(by_name[f.name], f) for f in table_fields)


def _registered_file(
    source: _Source,
    parquet: pq.FileMetaData,
    file_schema: pa.Schema,
    metadata: TableMetadata,
    table_arrow: pa.Schema,
) -> DataFile | None:
    """The DataFile that registers a Parquet file in place, or None when it must be rewritten.

    Registration needs a file an Iceberg reader reads exactly as the table's: columns matched
    by name through the table's name mapping (so no Parquet field ids, which would be taken
    as the table's ids), the table's types and nullability, a URI that pyiceberg parses back
    to the same path, and, for a partitioned table, one partition value per file. pyiceberg
    derives the partition from the footer's min/max statistics but ignores null counts, so a
    file whose partition source column has nulls (or no statistics) is rewritten instead of
    being filed under the wrong partition.
    """
    if parquet.num_rows == 0:
        return None
    if PyArrowFileIO.parse_location(source.uri)[2] != source.path:
        return None
    if _has_field_ids(list(file_schema)) or not _same_fields(list(file_schema), list(table_arrow)):
        return None
    schema = metadata.schema()
    spec = metadata.spec()
    try:
        statistics = data_file_statistics_from_parquet_metadata(
            parquet_metadata=parquet,
            stats_columns=compute_statistics_plan(schema, metadata.properties),
            parquet_column_mapping=parquet_path_to_id_mapping(schema),
        )
        for partition_field in spec.fields:
            source_id = partition_field.source_id
            if (
                source_id not in statistics.column_aggregates
                or statistics.null_value_counts.get(source_id) != 0
            ):
                return None
        partition = statistics.partition(spec, schema)
    except (ValueError, KeyError, TypeError) as exc:
        logger.info("%s cannot be registered in place (%s); rewriting it", source.uri, exc)
        return None
    return DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=source.uri,
        file_format=FileFormat.PARQUET,
        partition=partition,
        file_size_in_bytes=source.size,
        sort_order_id=None,
        spec_id=metadata.default_spec_id,
        equality_ids=None,
        key_metadata=None,
        **statistics.to_serialized_dict(),
    )


def _live_data_files(table: Table) -> set[str]:
    """The normalized paths of the current snapshot's data files."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return set()
    out = set()
    for manifest in snapshot.manifests(table.io):
        if manifest.content != ManifestContent.DATA:
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            out.add(normalize_uri(entry.data_file.file_path))
    return out


# -- Writing rewritten rows ---------------------------------------------------------------------


class _Writer:
    """Buffers conformed rows and writes them as data files in bounded chunks.

    pyiceberg's writer materializes whatever it is given, so rows go to it in chunks of at
    most ``WRITE_CHUNK_BYTES`` (or the table's target file size, if smaller): memory stays
    bounded, and each chunk becomes one file per partition. One write id and one counter for
    the whole job keep the file names unique.
    """

    def __init__(self, table: Table) -> None:
        self._metadata = table.metadata
        self._io = table.io
        target = property_as_int(
            self._metadata.properties,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
        )
        self._limit = min(WRITE_CHUNK_BYTES, target or WRITE_CHUNK_BYTES)
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._write_uuid = uuid.uuid4()
        self._counter = itertools.count(0)
        self.written: list[DataFile] = []

    def add(self, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        self._buffer.append(rows)
        self._buffered += rows.nbytes
        if self._buffered >= self._limit:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        chunk = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        with translate_errors():
            self.written.extend(
                write_data_files(
                    self._metadata,
                    chunk,
                    self._io,
                    write_uuid=self._write_uuid,
                    counter=self._counter,
                )
            )

    def discard(self) -> None:
        """Deletes the files written so far (never committed); failures leave orphans."""
        self._buffer, self._buffered = [], 0
        for data_file in self.written:
            try:
                self._io.delete(data_file.file_path)
            except FileNotFoundError:
                pass
            except Exception:
                logger.warning("could not delete %s", data_file.file_path, exc_info=True)
        self.written = []


def _bad_rows(source: _Source, decoded: DecodedRows, offset: int) -> InvalidArgument:
    problem = decoded.problems[0]
    more = decoded.invalid_count - 1
    tail = f" (and {more} more invalid rows in this batch)" if more > 0 else ""
    return InvalidArgument.field(
        source.field,
        f"{source.uri}: row {offset + problem.row_index + 1}: {_row_problem(problem)}{tail}",
    )


# -- The job ------------------------------------------------------------------------------------


def _summary_int(summary: Mapping[str, str], key: str) -> int:
    try:
        return int(summary.get(key, "0"))
    except ValueError:
        return 0


def earlier_outcome(table: Table, job_id: str) -> ImportOutcome | None:
    """The outcome of a snapshot this job committed already, if any (on any branch).

    Args:
        table: The table, freshly loaded.
        job_id: The job's id, as recorded under ``lakehouse.job-id``.

    Returns:
        The outcome recorded in that snapshot's summary, or None.
    """
    if not job_id:
        return None
    for snapshot in table.metadata.snapshots:
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if summary.get(JOB_ID_KEY) == job_id:
            return ImportOutcome(
                files_imported=_summary_int(summary, FILES_IMPORTED_KEY),
                files_registered=_summary_int(summary, FILES_REGISTERED_KEY),
                files_rewritten=_summary_int(summary, FILES_REWRITTEN_KEY),
                rows_imported=_summary_int(summary, ROWS_IMPORTED_KEY),
                snapshot_id=snapshot.snapshot_id,
            )
    return None


@dataclass
class _Planned:
    source: _Source
    data_file: DataFile | None  # set: registered in place; None: rewritten
    rows: int


def import_files(
    table: Table,
    *,
    source_prefix: str,
    source_uris: Sequence[str],
    file_format: int,
    ctx: JobContext,
    allowed_prefixes: Sequence[str] | None = None,
) -> ImportOutcome:
    """Appends the source files to ``table`` in one atomic commit.

    See the module docstring for the passes. Nothing is committed unless every file fits the
    table and every row converts; a stop (``ctx.check()``) before the commit commits nothing
    and deletes the files written so far.

    Args:
        table: The table, freshly loaded (its snapshots tell whether this job committed).
        source_prefix: Import every visible file under this prefix ("" when unset). Folders,
            zero-byte objects and hidden files (any path segment starting with ``_`` or
            ``.``, and ``.crc`` files) are skipped.
        source_uris: Or import exactly these files.
        file_format: A ``lakehouse.v1.FileFormat`` value; 0 infers each file's format from
            its extension.
        ctx: The job's context: its id is recorded in the commit; stop and progress.
        allowed_prefixes: The ``jobs.import_prefixes`` setting, checked again in case it
            changed since the job was created; None skips that check (the URIs' form is
            always checked).

    Returns:
        What was imported; zeros and no snapshot when no file was found.

    Raises:
        InvalidArgument: A source is malformed, missing, unreadable, corrupt, or does not
            fit the table (the error names the file, and the column or row); or a Parquet
            file to register is a data file of the table already.
        Unavailable: The object store or the catalog failed; retrying may succeed.
        Conflict: A concurrent commit changed the table's schema or partitioning, or kept
            winning; a retried attempt starts afresh.
        CommitStateUnknown: The commit's outcome is unknown; a retried attempt finds the
            snapshot by job id if it landed.
        JobStopped: The job was asked to stop; nothing was committed.
    """
    # Writes only with writer values pyiceberg can use (see writable_table).
    table = writable_table(table)
    done = earlier_outcome(table, ctx.job_id)
    if done is not None:
        logger.info("job %s committed snapshot %s already", ctx.job_id, done.snapshot_id)
        return done
    try:
        requested = ImportFormat(file_format)
    except ValueError:
        raise InvalidArgument.field(FORMAT_FIELD, f"unknown format {file_format}") from None
    checked = _checked_sources(source_prefix, source_uris, allowed_prefixes)
    files = _Files(table.io, allowed_prefixes)
    sources = files.expand(checked, bool(source_prefix), requested)
    if not sources:
        ctx.progress(1.0, "no files to import")
        return _NOTHING

    metadata = table.metadata
    schema = metadata.schema()
    table_arrow = schema_to_arrow(schema)
    reader = _Reader(table_arrow)
    plans = _check_all(sources, reader, _SchemaCheck(schema), metadata, table_arrow, ctx)
    registered = [p for p in plans if p.data_file is not None]
    if registered:
        live = _live_data_files(table)
        for plan in registered:
            if normalize_uri(plan.source.uri) in live:
                raise InvalidArgument.field(
                    plan.source.field,
                    f"{plan.source.uri} is a data file of the table already; importing it "
                    "again would add its rows twice",
                )

    writer = _Writer(table)
    try:
        _rewrite_all(plans, reader, schema, writer, ctx)
        rows = sum(p.rows for p in plans)
        outcome = ImportOutcome(
            files_imported=len(plans),
            files_registered=len(registered),
            files_rewritten=len(plans) - len(registered),
            rows_imported=rows,
            snapshot_id=None,
        )
        data_files = [p.data_file for p in registered if p.data_file is not None]
        data_files.extend(writer.written)
        if not data_files:
            ctx.progress(1.0, f"imported {len(plans)} files without rows")
            return outcome
        ctx.progress(0.95, f"committing {len(data_files)} data files")
        ctx.check()  # the last safe point: past it, the commit happens
        snapshot_id = _commit(table, data_files, bool(registered), outcome, ctx.job_id)
    except CommitStateUnknown:
        raise  # the files may be live: keep them
    except Exception:
        writer.discard()
        raise
    ctx.progress(1.0, f"imported {len(plans)} files, {rows} rows")
    return ImportOutcome(
        outcome.files_imported,
        outcome.files_registered,
        outcome.files_rewritten,
        outcome.rows_imported,
        snapshot_id,
    )


def _check_all(
    sources: list[_Source],
    reader: _Reader,
    check: _SchemaCheck,
    metadata: TableMetadata,
    table_arrow: pa.Schema,
    ctx: JobContext,
) -> list[_Planned]:
    """The check pass: every file's columns, before anything is written."""
    plans = []
    total = len(sources)
    for n, source in enumerate(sources, 1):
        ctx.check()
        if source.size == 0 and source.format != ImportFormat.PARQUET:
            plans.append(_Planned(source, None, 0))  # an empty text file: no header, no rows
        else:
            with _reading(source.field, source.uri, source.label):
                file_schema, parquet = reader.schema(source)
            check.check(source, file_schema)
            data_file = None
            if parquet is not None:
                data_file = _registered_file(source, parquet, file_schema, metadata, table_arrow)
            rows = parquet.num_rows if parquet is not None and data_file is not None else 0
            plans.append(_Planned(source, data_file, rows))
        ctx.progress(0.1 * n / total, f"checked {n} of {total} files")
    return plans


def _rewrite_all(
    plans: list[_Planned], reader: _Reader, schema: Schema, writer: _Writer, ctx: JobContext
) -> None:
    """The write pass: files not registered in place are read, conformed and written."""
    total = len(plans)
    for n, plan in enumerate(plans, 1):
        source = plan.source
        if plan.data_file is None and (source.size or source.format == ImportFormat.PARQUET):
            batches = reader.batches(source)
            try:
                while True:
                    ctx.check()
                    with _reading(source.field, source.uri, source.label):
                        batch = next(batches, None)
                    if batch is None:
                        break
                    decoded = conform_arrow(pa.Table.from_batches([batch]), schema)
                    if decoded.invalid_count:
                        raise _bad_rows(source, decoded, plan.rows)
                    plan.rows += batch.num_rows
                    writer.add(decoded.valid)
            finally:
                batches.close()
        ctx.progress(0.1 + 0.85 * n / total, f"read {n} of {total} files")
    writer.flush()


def _commit(
    table: Table,
    data_files: list[DataFile],
    needs_name_mapping: bool,
    outcome: ImportOutcome,
    job_id: str,
) -> int:
    """Appends the data files in one snapshot; returns its id.

    The commit requires the schema and partition spec the files were checked and written
    against: if either changed meanwhile, it fails (Conflict) and a retried attempt redoes
    the work on the new ones. A concurrent append is no conflict: pyiceberg retries the
    append on the new head itself, keeping the snapshot id, so a commit whose response was
    lost is recognized rather than repeated.
    """
    metadata = table.metadata
    properties = {
        JOB_ID_KEY: job_id,
        OPERATION_KEY: "import",
        FILES_IMPORTED_KEY: str(outcome.files_imported),
        FILES_REGISTERED_KEY: str(outcome.files_registered),
        FILES_REWRITTEN_KEY: str(outcome.files_rewritten),
        ROWS_IMPORTED_KEY: str(outcome.rows_imported),
    }
    namespace = ".".join(table.name()[:-1])
    with translate_errors(namespace, table.name()[-1]):
        tx = table.transaction()
        tx._apply(
            (),
            (
                AssertCurrentSchemaId.model_validate(
                    {"current-schema-id": metadata.current_schema_id}
                ),
                AssertDefaultSpecId.model_validate({"default-spec-id": metadata.default_spec_id}),
            ),
        )
        if needs_name_mapping and metadata.name_mapping() is None:
            # Registered files carry no field ids; readers match their columns by name.
            mapping = metadata.schema().name_mapping.model_dump_json()
            tx.set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping})
        with tx.update_snapshot(snapshot_properties=properties).fast_append() as append:
            for data_file in data_files:
                append.append_data_file(data_file)
            snapshot_id: int = append.snapshot_id
        tx.commit_transaction()
    logger.info(
        "job %s imported %d files (%d registered), %d rows, in snapshot %d",
        job_id,
        outcome.files_imported,
        outcome.files_registered,
        outcome.rows_imported,
        snapshot_id,
    )
    return snapshot_id
