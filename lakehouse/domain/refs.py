"""Named references to a table's snapshots (Iceberg branches and tags) as domain values."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from lakehouse.domain.errors import InvalidArgument

#: The branch that is the table's current state.
MAIN: Final = "main"
_REF_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


class RefKind(enum.Enum):
    """Branch or tag (``lakehouse.v1.RefType``)."""

    BRANCH = 1
    TAG = 2


@dataclass(frozen=True)
class RefInfo:
    """One branch or tag of a table.

    Attributes:
        name: The reference's name.
        kind: Branch or tag.
        snapshot_id: The snapshot it points at.
        max_ref_age_ms: How long to keep the reference after its snapshot's commit.
        min_snapshots_to_keep: Branches: the newest snapshots of the branch expiry keeps.
        max_snapshot_age_ms: Branches: the age beyond which its snapshots may expire.
    """

    name: str
    kind: RefKind
    snapshot_id: int
    max_ref_age_ms: int | None = None
    min_snapshots_to_keep: int | None = None
    max_snapshot_age_ms: int | None = None


def check_ref_name(field: str, name: str, *, allow_main: bool = False) -> str:
    """Checks a branch or tag name: 1 to 128 ASCII letters, digits, '.', '_' or '-'.

    Raises:
        InvalidArgument: Otherwise, or "main" where it is not allowed (reason INVALID_NAME).
    """
    if not _REF_NAME.fullmatch(name) or name in {".", ".."}:
        raise InvalidArgument.field(
            field, "must be 1 to 128 ASCII letters, digits, '.', '_' or '-'", reason="INVALID_NAME"
        )
    if name == MAIN and not allow_main:
        raise InvalidArgument.field(
            field, '"main" is the table itself: name another branch or tag', reason="INVALID_NAME"
        )
    return name


def check_branch(field: str, name: str) -> str:
    """The branch a write or a read of offsets names: empty is main.

    Raises:
        InvalidArgument: A malformed name (reason INVALID_NAME).
    """
    if not name:
        return MAIN
    return check_ref_name(field, name, allow_main=True)
