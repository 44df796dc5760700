"""Finding an import's source files: each named URI looked up, or every visible file of a prefix.

Sources are read through the table's own pyarrow file systems (same endpoint and credentials
as the table's files). Local paths are resolved once and refused when a symbolic link leads
outside the allowed folders; a listing skips writers' own files (``_SUCCESS``, dot files,
``.crc``). Each file's format is the requested one, or told by its extension.
"""

from __future__ import annotations

import enum
import errno
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow.fs as pa_fs
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO

from lakehouse.adapters.imports.read_errors import reading
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.import_uris import (
    IMPORT_PREFIXES_SETTING,
    MAX_SOURCE_FILES,
    inside,
    local_guard,
    shown,
)

_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst")  # what pyarrow's "detect" decompresses


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
class Source:
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
        """The format's name, as error messages say it."""
        return _FORMAT_NAMES[self.format]


class SourceFiles:
    """The table's object store, through pyarrow file systems with the catalog's settings.

    pyiceberg's ``PyArrowFileIO`` builds (and caches) an S3 file system from the catalog's
    ``s3.*`` properties, so sources are read with the same endpoint and credentials as the
    table's own files.
    """

    def __init__(self, io: FileIO, allowed_prefixes: Sequence[str] | None = None) -> None:
        self._io = io if isinstance(io, PyArrowFileIO) else PyArrowFileIO(io.properties)
        self._guard = local_guard(allowed_prefixes)

    def locate(self, uri: str) -> tuple[pa_fs.FileSystem, str]:
        """The file system that holds ``uri``, and the path it takes."""
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
        if self._guard is not None and not inside(real, self._guard):
            raise InvalidArgument.field(
                field_name,
                f"{shown(uri)} leads outside every prefix the setting "
                f"{IMPORT_PREFIXES_SETTING} allows (through a symbolic link)",
            )
        return real

    def expand(
        self, sources: list[tuple[str, str]], prefix: bool, requested: ImportFormat
    ) -> list[Source]:
        """The files to import: each URI looked up, or every visible file under the prefix."""
        if prefix:
            ((field_name, uri),) = sources
            return self._list(field_name, uri, requested)
        out: list[Source] = []
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

    def _stat(self, field_name: str, uri: str, requested: ImportFormat) -> Source:
        fs, path = self.locate(uri)
        local = urlsplit(uri).scheme == "file"
        if local:
            path = self._resolved(field_name, uri, path)
        with reading(field_name, uri, "a file"):
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
        return Source(field_name, uri, path, fs, int(info.size or 0), fmt, local, self._guard)

    def _list(self, field_name: str, prefix: str, requested: ImportFormat) -> list[Source]:
        fs, path = self.locate(prefix)
        scheme = urlsplit(prefix).scheme
        if scheme == "file":
            base = self._resolved(field_name, prefix, path.rstrip("/") or "/").rstrip("/")
            with reading(field_name, prefix, "a folder"):
                infos = self._walk_local(field_name, base)
        else:
            base = path.rstrip("/")
            selector = pa_fs.FileSelector(base, recursive=True, allow_not_found=True)
            with reading(field_name, prefix, "a folder"):
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
                Source(
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
                        f"{shown('file://' + linked)} is a symbolic link to a folder; "
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
