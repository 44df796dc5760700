"""pyiceberg, catalog and storage errors as domain errors, without server paths."""

from __future__ import annotations

import contextlib
import posixpath
import re
from collections.abc import Iterator

import requests
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    CommitStateUnknownException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    ServiceUnavailableError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.exceptions import ValidationError as IcebergValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError

from lakehouse.domain.errors import (
    AlreadyExists,
    CommitStateUnknown,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    LakehouseError,
    NotFound,
    Unavailable,
)


@contextlib.contextmanager
def telling_a_missing_namespace(catalog: Catalog, namespace: str, table: str) -> Iterator[None]:
    """Turns pyiceberg's "no such table" into "no such namespace" when the namespace is missing.

    pyiceberg's SQL catalog says "no such table" for a table of a namespace that does not
    exist; the caller must learn which name is wrong (one more query, on misses only). Use it
    inside ``translate_errors``.
    """
    try:
        yield
    except NoSuchTableError:
        if table and not catalog.namespace_exists(namespace):
            raise NoSuchNamespaceError(namespace) from None
        raise


@contextlib.contextmanager
def translate_errors(namespace: str = "", table: str = "") -> Iterator[None]:
    """Maps pyiceberg and database errors to domain errors (one map, used at every call)."""
    meta = {k: v for k, v in (("namespace", namespace), ("table", table)) if v}
    qualified = f"{namespace}.{table}" if table else namespace
    try:
        yield
    except LakehouseError:
        raise
    except NoSuchTableError as exc:
        raise NotFound(
            f"table {qualified} does not exist", reason="TABLE_NOT_FOUND", metadata=meta
        ) from exc
    except NoSuchNamespaceError as exc:
        raise NotFound(
            f"namespace {namespace} does not exist", reason="NAMESPACE_NOT_FOUND", metadata=meta
        ) from exc
    except TableAlreadyExistsError as exc:
        raise AlreadyExists(
            f"table {qualified} already exists", reason="TABLE_ALREADY_EXISTS", metadata=meta
        ) from exc
    except NamespaceAlreadyExistsError as exc:
        raise AlreadyExists(
            f"namespace {namespace} already exists",
            reason="NAMESPACE_ALREADY_EXISTS",
            metadata=meta,
        ) from exc
    except NamespaceNotEmptyError as exc:
        raise FailedPrecondition(
            f"namespace {namespace} still holds tables; delete them first",
            reason="NAMESPACE_NOT_EMPTY",
            metadata=meta,
        ) from exc
    except (CommitFailedException, ValidationException) as exc:
        # ValidationException: a concurrent commit removed files this one replaces.
        raise Conflict(f"table {qualified} was changed concurrently; retry", metadata=meta) from exc
    except ValueError as exc:
        if "UUID does not match" not in str(exc):
            raise
        # pyiceberg's commit retry refreshes the table and finds another one under the name:
        # it was dropped and created again meanwhile (found by the fuzz test, as INTERNAL).
        raise Conflict(
            f"table {qualified} was dropped and created again meanwhile; retry", metadata=meta
        ) from exc
    except CommitStateUnknownException as exc:
        raise CommitStateUnknown(
            f"the commit to {qualified} may or may not have happened", metadata=meta
        ) from exc
    except (OperationalError, SqlTimeoutError, ServiceUnavailableError) as exc:
        raise Unavailable(
            "catalog unavailable: " + brief(exc), reason="CATALOG_UNAVAILABLE"
        ) from exc
    except IntegrityError as exc:
        # pyiceberg's SqlCatalog checks, then writes: two calls racing on one name pass the
        # check together and the database's unique key stops the second one.
        raise Conflict(
            f"{qualified or 'the catalog'} was changed concurrently; retry", metadata=meta
        ) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(
                "catalog unavailable: " + brief(exc), reason="CATALOG_UNAVAILABLE"
            ) from exc
        raise
    except (ConnectionError, TimeoutError) as exc:
        raise Unavailable(
            "backing service unavailable: " + brief(exc), reason="BACKEND_UNAVAILABLE"
        ) from exc
    except requests.RequestException as exc:
        # The REST catalog's transport (an OSError too: it must not pass for the object
        # store's, whose breaker it would open).
        raise Unavailable(
            "catalog unavailable: " + brief(exc), reason="CATALOG_UNAVAILABLE"
        ) from exc
    except FileNotFoundError as exc:
        # A file the metadata names is gone (deleted outside the table's metadata): the table
        # is damaged, which no retry mends, and the object store is up.
        raise FailedPrecondition(
            f"{qualified or 'the table'} references a file that no longer exists: "
            + missing_file(exc),
            reason="TABLE_FILE_MISSING",
            metadata=meta,
        ) from exc
    except OSError as exc:  # pyarrow's file systems report S3 and disk failures as OSError
        raise Unavailable("object store: " + brief(exc), reason="OBJECT_STORE_UNAVAILABLE") from exc


#: An absolute local path or an object-store URI inside an error text (pyarrow quotes the
#: file it failed on: "Failed to open local file '/srv/lakehouse/warehouse/...'").
_PATH_IN_TEXT = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]*|(?<![\w.])/[^\s'\"]+)")


_QUOTED_PATH = re.compile(r"'([^'\s]*/[^'\s]*)'")


def without_paths(text: str) -> str:
    """``text`` with every path or URI cut to its last segment.

    An answer names the file, not where the server keeps its warehouse.
    """
    return _PATH_IN_TEXT.sub(lambda m: posixpath.basename(m.group(0).rstrip("/")) or "/", text)


def brief(exc: BaseException) -> str:
    """The first line of an error, without server paths, at most 200 characters."""
    text = str(getattr(exc, "orig", None) or exc)
    return without_paths(text.splitlines()[0])[:200] if text else type(exc).__name__


def missing_file(exc: BaseException) -> str:
    """The name of the file a FileNotFoundError is about, without its folder."""
    name = getattr(exc, "filename", None)
    if not name:
        # pyarrow's S3 file system quotes the key: "... for key 'warehouse/r/t/data/x.parquet'"
        quoted = _QUOTED_PATH.search(str(exc))
        name = quoted.group(1) if quoted else None
    if name:
        return posixpath.basename(str(name).rstrip("/"))
    return brief(exc)


@contextlib.contextmanager
def metadata_errors(location: str) -> Iterator[None]:
    """Maps failures to read a table metadata file to NotFound or InvalidArgument."""
    try:
        yield
    except (FileNotFoundError, OSError) as exc:
        if isinstance(exc, FileNotFoundError) or "not found" in str(exc).lower():
            raise NotFound(
                f"no table metadata file at {location}", reason="METADATA_NOT_FOUND"
            ) from exc
        raise
    except (ValueError, IcebergValidationError) as exc:  # not JSON, or not table metadata
        # The parser's message quotes the file; it stays out of the answer.
        raise InvalidArgument.field(
            "metadata_location", "is not an Iceberg table metadata file"
        ) from exc
