"""Paginators: small objects that advance on each response body.

:class:`Paginator` is the interface both clients share (the 3CX one lives in
``m365_3cx.threecx.paging``). A paginator knows when it is finished, counts the
pages it has seen and refuses to loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from m365_3cx.errors import GraphFatalError


@runtime_checkable
class Paginator(Protocol):
    """What a client needs from a paginator."""

    @property
    def finished(self) -> bool:
        """True once the last page has been seen."""
        ...

    @property
    def page_count(self) -> int:
        """Pages seen so far."""
        ...

    def advance(self, body: Mapping[str, Any]) -> None:
        """Take the next response body into account.

        :raises FatalError: when the service repeats itself (a loop).
        """
        ...


class NextLinkPaginator:
    """Follows ``@odata.nextLink`` until a page has none; remembers ``@odata.deltaLink``.

    The next link is used as-is (it already holds every query option). A next link
    seen before means the service is looping.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._next_link: str | None = None
        self._delta_link: str | None = None
        self._pages = 0
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def page_count(self) -> int:
        return self._pages

    @property
    def next_link(self) -> str | None:
        """The URL of the next page, or ``None`` when finished."""
        return self._next_link

    @property
    def delta_link(self) -> str | None:
        """The delta link of the last page (only set once finished, for delta queries)."""
        return self._delta_link

    def advance(self, body: Mapping[str, Any]) -> None:
        """Read the paging links of one response body.

        :param body: the decoded JSON page.
        :raises GraphFatalError: when called after the last page, or when a next link repeats.
        """
        if self._finished:
            raise GraphFatalError("paginator advanced past the last page", code="PaginationFinished")
        self._pages += 1
        next_link = body.get("@odata.nextLink")
        delta_link = body.get("@odata.deltaLink")
        if next_link:
            if not isinstance(next_link, str):
                raise GraphFatalError("@odata.nextLink is not a string", code="PaginationInvalid")
            if next_link in self._seen:
                raise GraphFatalError(
                    f"Graph repeated a next link after {self._pages} pages", code="PaginationLoop"
                )
            self._seen.add(next_link)
            self._next_link = next_link
            return
        self._next_link = None
        self._delta_link = delta_link if isinstance(delta_link, str) and delta_link else None
        self._finished = True
