"""The conformance check the port suites rely on finds each kind of drift it claims to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from fixtures.ports import protocol_mismatches


class Port(Protocol):
    async def get(self, key: str, *, fresh: bool = False) -> bytes: ...

    def listing(self, prefix: str) -> AsyncIterator[str]: ...

    def count(self) -> int: ...


class Conforming:
    async def get(self, key: str, *, fresh: bool = False) -> bytes:
        return b""

    async def listing(self, prefix: str) -> AsyncIterator[str]:
        yield prefix

    def count(self) -> int:
        return 0

    def extra(self) -> None:
        """Methods beyond the port's are allowed."""


class Drifted:
    def get(self, name: str, fresh: bool = True) -> bytes:  # sync, renamed, positional, default
        return b""

    async def count(self) -> int:  # async where the port's is not
        return 0


def test_a_conforming_class_has_no_mismatches() -> None:
    assert protocol_mismatches(Port, Conforming) == []


def test_each_kind_of_drift_is_reported() -> None:
    problems = protocol_mismatches(Port, Drifted)

    assert len(problems) == 4, problems
    assert "Drifted.listing is missing" in problems
    assert "Drifted.get is def, the port's is async def" in problems
    assert any(p.startswith("Drifted.get takes (self:") for p in problems)
    assert "Drifted.count is async def, the port's is def" in problems


def test_a_changed_default_is_reported() -> None:
    class OtherDefault:
        async def get(self, key: str, *, fresh: bool = True) -> bytes:
            return b""

        async def listing(self, prefix: str) -> AsyncIterator[str]:
            yield prefix

        def count(self) -> int:
            return 0

    assert protocol_mismatches(Port, OtherDefault) == [
        "OtherDefault.get: parameter fresh defaults to True, the port's to False"
    ]
