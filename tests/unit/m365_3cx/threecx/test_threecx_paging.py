"""Table-driven tests for the 3CX $skip/$top paginator."""

from __future__ import annotations

from typing import Any

import pytest

from m365_3cx.errors import ThreeCXFatalError
from m365_3cx.graph.paging import Paginator
from m365_3cx.threecx.paging import SkipTopPaginator


def _page(*ids: int) -> dict[str, Any]:
    return {"value": [{"Id": i} for i in ids]}


@pytest.mark.parametrize(
    ("page_size", "bodies", "pages", "skips", "finished"),
    [
        (3, [_page()], 1, [0], True),
        (3, [_page(1, 2)], 1, [0], True),
        (3, [_page(1, 2, 3), _page()], 2, [0, 3], True),
        (3, [_page(1, 2, 3), _page(4, 5, 6), _page(7)], 3, [0, 3, 6], True),
        (3, [_page(1, 2, 3)], 1, [0], False),
        (2, [_page(1, 2), _page(3, 4)], 2, [0, 2], False),
    ],
)
def test_skip_top_paginator(
    page_size: int, bodies: list[dict[str, Any]], pages: int, skips: list[int], finished: bool
) -> None:
    paginator = SkipTopPaginator(page_size)
    assert isinstance(paginator, Paginator)
    seen_skips = []
    for body in bodies:
        params = paginator.params()
        assert params["$orderby"] == "Id" and params["$top"] == page_size
        seen_skips.append(params["$skip"])
        paginator.advance(body)
    assert seen_skips == skips
    assert paginator.page_count == pages
    assert paginator.finished is finished


@pytest.mark.parametrize(
    ("bodies", "code"),
    [
        ([_page(1, 2), _page(1, 2)], "PAGINATION_LOOP"),
        ([_page(1), _page(2)], "PAGINATION_FINISHED"),
        ([{"items": []}], "INVALID_RESPONSE"),
        ([{"value": None}], "INVALID_RESPONSE"),
    ],
)
def test_skip_top_paginator_errors(bodies: list[dict[str, Any]], code: str) -> None:
    paginator = SkipTopPaginator(2)
    with pytest.raises(ThreeCXFatalError) as info:
        for body in bodies:
            paginator.advance(body)
    assert info.value.code == code


@pytest.mark.parametrize("size", [0, 101, -1])
def test_page_size_bounds(size: int) -> None:
    with pytest.raises(ValueError):
        SkipTopPaginator(size)
