"""Table-driven tests for the Graph next-link paginator."""

from __future__ import annotations

from typing import Any

import pytest

from m365_3cx.errors import GraphFatalError
from m365_3cx.graph.paging import NextLinkPaginator, Paginator

N1 = "https://g.test/v1.0/users?$skiptoken=1"
N2 = "https://g.test/v1.0/users?$skiptoken=2"
D = "https://g.test/v1.0/users/delta?$deltatoken=9"


@pytest.mark.parametrize(
    ("bodies", "pages", "delta", "next_link"),
    [
        ([{"value": []}], 1, None, None),
        ([{"value": [1], "@odata.deltaLink": D}], 1, D, None),
        ([{"value": [1], "@odata.nextLink": N1}, {"value": [2]}], 2, None, None),
        (
            [
                {"value": [], "@odata.nextLink": N1},
                {"value": [], "@odata.nextLink": N2},
                {"value": [3], "@odata.deltaLink": D},
            ],
            3,
            D,
            None,
        ),
        ([{"value": [1], "@odata.nextLink": N1}], 1, None, N1),
        ([{"value": [1], "@odata.deltaLink": ""}], 1, None, None),
    ],
)
def test_next_link_paginator(
    bodies: list[dict[str, Any]], pages: int, delta: str | None, next_link: str | None
) -> None:
    paginator = NextLinkPaginator()
    assert isinstance(paginator, Paginator)
    for body in bodies:
        paginator.advance(body)
    assert paginator.page_count == pages
    assert paginator.delta_link == delta
    assert paginator.next_link == next_link
    assert paginator.finished is (next_link is None)


@pytest.mark.parametrize(
    ("bodies", "code"),
    [
        ([{"@odata.nextLink": N1}, {"@odata.nextLink": N1}], "PaginationLoop"),
        ([{"@odata.nextLink": N1}, {"@odata.nextLink": N2}, {"@odata.nextLink": N1}], "PaginationLoop"),
        ([{"value": []}, {"value": []}], "PaginationFinished"),
        ([{"@odata.nextLink": 5}], "PaginationInvalid"),
    ],
)
def test_next_link_paginator_errors(bodies: list[dict[str, Any]], code: str) -> None:
    paginator = NextLinkPaginator()
    with pytest.raises(GraphFatalError) as info:
        for body in bodies:
            paginator.advance(body)
    assert info.value.code == code
