"""Which source URIs an import may read: their one canonical spelling and the allowed prefixes.

A URI is accepted only in canonical form (``s3://bucket/key`` or ``file:///absolute/path``,
no ``..``, no query or fragment) and only under a prefix of the ``jobs.import_prefixes``
setting, compared as folders. For local files the allowed prefixes are also resolved to real
paths (``local_guard``), so that a symbolic link cannot lead a source outside them
(``inside``). Checked at ``CreateJob`` time and again when the job runs.
"""

from __future__ import annotations

import logging
import os
import posixpath
import unicodedata
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from lakehouse.domain.buckets import S3_BUCKET_NAME
from lakehouse.domain.errors import FieldViolation, InvalidArgument

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

_MAX_VIOLATIONS = 100


def shown(uri: str) -> str:
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
        raise ValueError(f"{shown(uri)} must not contain control characters")
    if "?" in uri or "#" in uri:
        raise ValueError(f"{shown(uri)} must not contain '?' or '#' (a query or fragment)")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise ValueError(f"{shown(uri)} is not a valid URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("s3", "file"):
        raise ValueError(f"{shown(uri)} must be an s3:// or file:// URI")
    segments = parts.path.split("/")
    if any(s == ".." or unquote(s) == ".." for s in segments):
        raise ValueError(f"{shown(uri)} must not contain '..' segments")
    if scheme == "s3":
        if not S3_BUCKET_NAME.fullmatch(parts.netloc) or ".." in parts.netloc:
            raise ValueError(f"{shown(uri)} must name a bucket: s3://bucket/key")
        key = parts.path[1:]
        if not folder and (not key or key.endswith("/")):
            raise ValueError(f"{shown(uri)} must name an object, not a folder")
        canonical = f"s3://{parts.netloc}/{key}"
    else:
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"{shown(uri)} must be file:///absolute/path, without a host")
        if not folder and parts.path.endswith("/"):
            raise ValueError(f"{shown(uri)} must name a file, not a folder")
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


def checked_sources(
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
                    f"{shown(uri)} is not under any prefix the setting "
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
    checked_sources(source_prefix, source_uris, allowed_prefixes)


def local_guard(allowed_prefixes: Sequence[str] | None) -> tuple[str, ...] | None:
    """The real paths of the allowed ``file://`` prefixes (None: no allow-list to check)."""
    if allowed_prefixes is None:
        return None
    guard = []
    for prefix in _allowed_prefixes(allowed_prefixes):
        if prefix.startswith("file://"):
            real = os.path.realpath(prefix[len("file://") :])
            guard.append(real.rstrip("/") + "/")
    return tuple(guard)


def inside(real: str, guard: Sequence[str]) -> bool:
    """Whether a resolved path is, or lies in, one of the resolved allowed folders."""
    as_folder = real.rstrip("/") + "/"
    return any(as_folder.startswith(folder) for folder in guard)
