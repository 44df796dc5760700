"""Page sizes and page tokens (AIP-158)."""

from __future__ import annotations

import pytest

from lakehouse.core.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, encode_token, paginate
from lakehouse.domain.errors import InvalidArgument

ITEMS = [f"t{i:04d}" for i in range(2500)]


def _all_pages(items: list[str], size: int) -> list[list[str]]:
    pages, token = [], ""
    while True:
        page = paginate(items, key=str, scope="s", requested_size=size, token=token)
        pages.append(page.items)
        if not page.next_page_token:
            return pages
        token = page.next_page_token


def test_pages_cover_every_item_once_in_order() -> None:
    pages = _all_pages(list(reversed(ITEMS)), 700)
    assert [len(p) for p in pages] == [700, 700, 700, 400]
    assert [x for p in pages for x in p] == ITEMS


def test_zero_means_default_and_large_sizes_are_clamped() -> None:
    assert (
        len(paginate(ITEMS, key=str, scope="s", requested_size=0, token="").items)
        == DEFAULT_PAGE_SIZE
    )
    assert (
        len(paginate(ITEMS, key=str, scope="s", requested_size=10**9, token="").items)
        == MAX_PAGE_SIZE
    )


def test_exact_fit_has_no_next_token() -> None:
    page = paginate(ITEMS[:10], key=str, scope="s", requested_size=10, token="")
    assert page.items == ITEMS[:10]
    assert page.next_page_token == ""


def test_items_added_between_calls_do_not_shift_pages() -> None:
    first = paginate(ITEMS, key=str, scope="s", requested_size=10, token="")
    grown = ["a_new_first_item", *ITEMS]
    second = paginate(grown, key=str, scope="s", requested_size=10, token=first.next_page_token)
    assert second.items == ITEMS[10:20]


def test_negative_size_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as exc:
        paginate(ITEMS, key=str, scope="s", requested_size=-1, token="")
    assert exc.value.violations[0].field == "page_size"


@pytest.mark.parametrize("token", ["garbage!!", "e30", "bm90IGpzb24", "\x00\x01", "=" * 8])
def test_garbage_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        paginate(ITEMS, key=str, scope="s", requested_size=5, token=token)
    assert exc.value.reason == "INVALID_PAGE_TOKEN"
    assert exc.value.violations[0].field == "page_token"


def test_token_from_another_list_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="different list"):
        paginate(
            ITEMS, key=str, scope="tables:a", requested_size=5, token=encode_token("tables:b", "x")
        )
