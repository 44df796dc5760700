"""Name validation: what clients may call namespaces, tables, columns and writers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lakehouse.config import ApiKey
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.names import check_column_name, check_identifier, check_writer_id

BAD_IDENTIFIERS = {
    "": "must not be empty",
    "a/b": "'/' is not allowed",
    "..": "'.' is not allowed",
    "a.b": "'.' is not allowed",
    "tab\tname": "'\\t' is not allowed",
    "nul\x00": "'\\x00' is not allowed",
    "x" * 300: "at most 128 characters",
    "Orders": "'O' is not allowed",
    "caf\u00e9": "'é' is not allowed",
    "\u0430dmin": "is not allowed",  # Cyrillic a: looks like "admin"
    "1st": "must not start with a digit",
    "a-b": "'-' is not allowed",
    "a b": "' ' is not allowed",
}
GOOD_IDENTIFIERS = ["orders", "_staging", "t1", "a" * 128, "sales_2024"]


@pytest.mark.parametrize("name", list(BAD_IDENTIFIERS), ids=repr)
def test_bad_identifiers_are_rejected_with_a_reason(name: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_identifier("table", name)
    assert exc.value.reason == "INVALID_NAME"
    (violation,) = exc.value.violations
    assert violation.field == "table"
    assert BAD_IDENTIFIERS[name] in violation.description


@pytest.mark.parametrize("name", GOOD_IDENTIFIERS)
def test_good_identifiers_pass(name: str) -> None:
    assert check_identifier("table", name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a.b", "'.'"),
        (" padded", "whitespace"),
        ("bell\x07", "U+0007"),
        ("zero\u200bwidth", "U+200B"),
        ("x" * 129, "at most 128"),
    ],
)
def test_bad_column_names_are_rejected(name: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_column_name("schema.fields[0].name", name)
    assert reason in exc.value.violations[0].description


@pytest.mark.parametrize("name", ["id", "Amount", "näme", "with space", "x" * 128])
def test_column_names_allow_mixed_case_and_unicode_letters(name: str) -> None:
    assert check_column_name("f", name) == name


@pytest.mark.parametrize("name", [*BAD_IDENTIFIERS, "x" * 129, "ok\n", *GOOD_IDENTIFIERS], ids=repr)
def test_namespace_grants_accept_exactly_the_names_the_service_accepts(name: str) -> None:
    """An API key's ``namespaces`` are checked by the same rule as CreateNamespace's name."""
    try:
        check_identifier("name", name)
        service_accepts = True
    except InvalidArgument:
        service_accepts = False
    try:
        ApiKey(name="k", sha256="0" * 64, role="viewer", namespaces=(name,))
        grant_accepted = True
    except ValidationError:
        grant_accepted = False
    assert grant_accepted == service_accepts


@pytest.mark.parametrize(
    "writer_id", ["", ".", "..", "a/b", "a\\b", "x" * 129, "tab\t", "caf\u00e9", "a b", "w\x00"]
)
def test_bad_writer_ids_are_rejected(writer_id: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_writer_id("writer_id", writer_id)
    assert exc.value.reason == "INVALID_WRITER_ID"
    assert [v.field for v in exc.value.violations] == ["writer_id"]


@pytest.mark.parametrize("writer_id", ["w1", "etl.orders-2024_06", "...", "a..b", "X" * 128])
def test_writer_ids_allow_dots_dashes_and_mixed_case(writer_id: str) -> None:
    assert check_writer_id("writer_id", writer_id) == writer_id
