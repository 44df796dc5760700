"""Where a location lies: inside the warehouse, inside a table's folder.

Used to confine what the service reads and deletes for a table (RegisterTable, purge,
snapshot expiry) to the warehouse and the table's own folder.
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

_S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})


def canonical_location(location: str) -> str | None:
    """``location`` as ``s3://bucket/key`` or ``file:///abs/path``, or None if it is neither.

    Local paths are normalised lexically (``..`` resolved, as the file system would); an
    S3 key with a ``.`` or ``..`` segment is None, since S3 keeps such segments literally
    while some clients resolve them.
    """
    try:
        parts = urlsplit(location)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment or "?" in location or "#" in location:
        return None
    if scheme in _S3_SCHEMES:
        segments = parts.path.split("/")
        if not parts.netloc or any(s in {".", ".."} for s in segments):
            return None
        return f"s3://{parts.netloc}/" + "/".join(s for s in segments if s)
    if scheme == "file" or (not scheme and location.startswith("/")):
        if scheme and parts.netloc not in {"", "localhost"}:
            return None
        path = parts.path if scheme else location
        return "file://" + posixpath.normpath(path).replace("//", "/")
    return None


def within_location(location: str, root: str) -> bool:
    """Whether ``location`` lies strictly below ``root`` (the same bucket or disk).

    False when either cannot be parsed as an S3 or local location: a REST catalog's
    warehouse is a name, and its server places tables itself.
    """
    path, base = canonical_location(location), canonical_location(root)
    if path is None or base is None:
        return False
    return path.startswith(base.rstrip("/") + "/")
