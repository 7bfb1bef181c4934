"""``$orderby=Id&$top&$skip`` paging for the 3CX XAPI.

The XAPI caps ``$top`` at 100 and sends no ``@odata.nextLink``, so the client
pages by offset, ordered by ``Id``, until a short page. Implements the shared
:class:`~m365_3cx.graph.paging.Paginator` interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from m365_3cx.errors import ThreeCXFatalError

MAX_PAGE_SIZE = 100


class SkipTopPaginator:
    """Offset paginator that stops on a short page and refuses to loop.

    :param page_size: ``$top`` per request (1..100).
    :param order_by: ``$orderby`` value; must give a stable order.
    :raises ValueError: for a page size outside 1..100 (a capped server would make a full page look short).
    """

    def __init__(self, page_size: int = MAX_PAGE_SIZE, order_by: str = "Id") -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        self.page_size = page_size
        self.order_by = order_by
        self._skip = 0
        self._pages = 0
        self._finished = False
        self._previous_ids: list[Any] | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def page_count(self) -> int:
        return self._pages

    @property
    def skip(self) -> int:
        """Offset of the next page."""
        return self._skip

    def params(self) -> dict[str, Any]:
        """Query options for the next page."""
        return {"$orderby": self.order_by, "$top": self.page_size, "$skip": self._skip}

    def advance(self, body: Mapping[str, Any]) -> None:
        """Take one page body (``{"value": [...]}``) into account.

        :raises ThreeCXFatalError: when called after the last page, when the body has no ``value``
            list, or when a page repeats the previous page's ids (the server ignored ``$skip``).
        """
        if self._finished:
            raise ThreeCXFatalError("paginator advanced past the last page", code="PAGINATION_FINISHED")
        items = body.get("value")
        if not isinstance(items, list):
            raise ThreeCXFatalError("collection response has no value list", code="INVALID_RESPONSE")
        self._pages += 1
        ids = [item.get("Id") if isinstance(item, Mapping) else None for item in items]
        if items and self._previous_ids is not None and ids == self._previous_ids:
            raise ThreeCXFatalError(
                f"page {self._pages} repeats the previous page (skip={self._skip})", code="PAGINATION_LOOP"
            )
        self._previous_ids = ids
        self._skip += len(items)
        if len(items) < self.page_size:
            self._finished = True
