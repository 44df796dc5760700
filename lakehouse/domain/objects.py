"""What object storage holds, as core and the adapters describe it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object."""

    uri: str
    size: int
    last_modified_epoch: float
