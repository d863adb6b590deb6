"""The crawler lesson's moved mechanics: RFC 9110's table of conditional requests, judged
by the origin's own rule, and the price a product page shows."""

from __future__ import annotations

import pytest

from cachelab.caching.http_cache import (
    Validators,
    conditional_request_cases,
    http_date,
    not_modified,
    strong_etag,
)
from cachelab.shop.app import render_product_page
from cachelab.workload.crawler import price_in_page


def test_every_conditional_case_expects_what_the_origin_decides() -> None:
    modified_s = 1_700_000_000
    etag = strong_etag(b"<html>page</html>")
    cases = conditional_request_cases(etag, http_date(modified_s))
    assert {expected for _, _, expected in cases} == {200, 304}
    for label, headers, expected in cases:
        decided = not_modified(
            "GET", Validators(etag, modified_s),
            if_none_match=[headers["If-None-Match"]] if "If-None-Match" in headers else [],
            if_modified_since=([headers["If-Modified-Since"]]
                               if "If-Modified-Since" in headers else []))
        assert (304 if decided else 200) == expected, label


def test_conditional_cases_need_a_date() -> None:
    with pytest.raises(ValueError, match="not an HTTP-date"):
        conditional_request_cases('"x"', "yesterday")


def test_price_in_page_reads_the_rendered_price() -> None:
    page = render_product_page({"name": "Lamp", "description": "bright", "category": "home",
                                "price_cents": 1999, "stock": 3}).encode()
    assert price_in_page(page) == "19.99"
    assert price_in_page(b"<html>no price</html>") == "-"
