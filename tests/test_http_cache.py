"""HTTP caching pieces: Cache-Control, validators, conditional requests, and the page
cache on a real Redis."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from cachelab.caching.http_cache import (
    CachePolicy,
    PageCache,
    Validators,
    http_date,
    not_modified,
    parse_cache_control,
    parse_entity_tags,
    parse_http_date,
    strong_etag,
    weak_match,
)
from cachelab.lab import Lab

# ------------------------------------------------------------------ Cache-Control


def test_policy_header_lists_the_directives_a_crawler_and_a_cdn_read() -> None:
    policy = CachePolicy(max_age_s=60, s_maxage_s=300, stale_while_revalidate_s=30)
    assert policy.header() == "public, max-age=60, s-maxage=300, stale-while-revalidate=30"
    assert CachePolicy(max_age_s=5, s_maxage_s=None, stale_while_revalidate_s=None,
                       public=False).header() == "max-age=5"


def test_policy_parses_back_from_its_header_and_refuses_what_it_cannot_state() -> None:
    policy = CachePolicy(max_age_s=3, s_maxage_s=60, stale_while_revalidate_s=0)
    assert CachePolicy.parse(policy.header()) == policy
    assert CachePolicy.parse("max-age=10") == CachePolicy(10, None, None, public=False)
    for bad in ("s-maxage=5", "max-age=ten", "max-age=5, no-store", "max-age=-1"):
        with pytest.raises(ValueError):
            CachePolicy.parse(bad)
    with pytest.raises(ValueError):
        CachePolicy(max_age_s=-1)


def test_cache_control_parsing_handles_case_quotes_and_repeats() -> None:
    parsed = parse_cache_control('Public, MAX-AGE=60, no-cache="set-cookie, x-a", '
                                 'max-age=5, ext="a\\"b"')
    assert parsed == {"public": None, "max-age": "60", "no-cache": "set-cookie, x-a",
                      "ext": 'a"b'}
    assert parse_cache_control(None) == parse_cache_control("") == {}


# ------------------------------------------------------------------ validators


def test_strong_etag_follows_the_bytes() -> None:
    tag = strong_etag(b"<p>one</p>")
    assert tag == strong_etag("<p>one</p>")
    assert tag != strong_etag(b"<p>one</p>\n")
    assert tag.startswith('"') and tag.endswith('"') and not tag.startswith("W/")
    assert parse_entity_tags([tag]) == [tag]


IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
SECONDS = 784111777


def test_http_dates_parse_in_all_three_forms_and_nothing_else() -> None:
    assert http_date(SECONDS) == IMF
    assert parse_http_date(IMF) == SECONDS
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == SECONDS
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == SECONDS
    for bad in ("yesterday", "Sun, 06 Nov 1994 08:49:37 +0200", "Sun, 06 Nov 1994 08:49 GMT",
                "Sun, 30 Feb 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:49:37 GMT", ""):
        assert parse_http_date(bad) is None, bad


def test_a_two_digit_year_more_than_50_years_ahead_is_in_the_past() -> None:
    in_2030 = float(parse_http_date("Tue, 01 Jan 2030 00:00:00 GMT") or 0)

    def year(value: str) -> int:
        return time.gmtime(parse_http_date(value, now_s=in_2030)).tm_year

    assert year("Thursday, 01-Jan-81 00:00:00 GMT") == 1981  # 2081 is 51 years ahead
    assert year("Monday, 01-Jan-80 00:00:00 GMT") == 2080  # exactly 50: not more
    assert year("Sunday, 01-Jan-40 00:00:00 GMT") == 2040


def test_entity_tag_lists() -> None:
    assert parse_entity_tags(['"a", W/"b"', ' "c" ']) == ['"a"', 'W/"b"', '"c"']
    assert parse_entity_tags(["*"]) == ["*"]
    assert parse_entity_tags([',, "a" ,']) == ['"a"']
    assert parse_entity_tags(["a"]) is None  # unquoted
    assert parse_entity_tags(['"a" "b"']) is None
    assert weak_match('W/"x"', '"x"') and not weak_match('"x"', '"y"')


PAGE = Validators(etag='"abc"', last_modified_s=SECONDS)


@pytest.mark.parametrize(("inm", "ims", "expected"), [
    (['"abc"'], [], True),
    (['W/"abc"'], [], True),  # If-None-Match compares weakly
    (['"x", "abc"'], [], True),
    (['"x"', '"abc"'], [], True),  # two header lines make one list
    (["*"], [], True),
    (['"x"'], [], False),
    (['"x"'], [IMF], False),  # If-None-Match decides alone: the date is not looked at
    (['"abc"'], ["Sat, 01 Jan 1994 00:00:00 GMT"], True),
    (["abc"], [IMF], False),  # a malformed If-None-Match matches nothing
    ([], [IMF], True),
    ([], ["Mon, 07 Nov 1994 08:49:37 GMT"], True),
    ([], ["Sun, 06 Nov 1994 08:49:36 GMT"], False),
    ([], ["not a date"], False),
    ([], [IMF, IMF], False),  # more than one member: ignored
    ([], [], False),
])
def test_conditional_get_follows_rfc_9110(inm: list[str], ims: list[str],
                                          expected: bool) -> None:
    assert not_modified("GET", PAGE, if_none_match=inm, if_modified_since=ims) is expected


def test_only_get_and_head_are_answered_304() -> None:
    assert not_modified("HEAD", PAGE, if_none_match=['"abc"'])
    assert not not_modified("POST", PAGE, if_none_match=['"abc"'])


def test_an_equal_date_proves_nothing_when_the_page_changed_twice_in_that_second() -> None:
    twice = Validators(etag='"abc"', last_modified_s=SECONDS, last_modified_strong=False)
    assert not not_modified("GET", twice, if_modified_since=[IMF])
    assert not_modified("GET", twice, if_modified_since=["Mon, 07 Nov 1994 08:49:37 GMT"])
    unknown = Validators(etag='"abc"', last_modified_s=None)
    assert not not_modified("GET", unknown, if_modified_since=[IMF])


# ------------------------------------------------------------------ the page cache


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def render(product: dict[str, Any]) -> str:
    return f"<h1>{product['name']}</h1><p>{product['price_cents']}</p>"


def product(version: int, price: int = 100) -> dict[str, Any]:
    return {"id": 7, "name": "lamp", "price_cents": price, "version": version}


def test_a_page_is_stored_with_its_validators_and_read_back(lab: Lab) -> None:
    client = lab.redis()
    clock = Clock(1_000_000.25)
    pages = PageCache(client, render=render, ttl_s=60, clock=clock)
    assert pages.get(7) is None

    served = pages.put(7, product(1))
    assert served.html == render(product(1))
    assert served.validators == Validators(strong_etag(served.html), 1_000_000, True)
    assert pages.get(7) == served
    assert 0 < client.pttl(pages.key(7)) <= 60_000
    assert client.ttl(pages.change_key(7)) == -1  # the change note has no TTL
    assert (pages.stats.hits, pages.stats.misses) == (1, 1)
    assert served.headers(CachePolicy(max_age_s=5, s_maxage_s=None,
                                      stale_while_revalidate_s=None)) == {
        "Cache-Control": "public, max-age=5", "ETag": served.etag,
        "Last-Modified": http_date(1_000_000)}


def test_a_page_rendered_again_keeps_its_last_modified(lab: Lab) -> None:
    client = lab.redis()
    clock = Clock(1_000_000.0)
    pages = PageCache(client, render=render, ttl_s=60, clock=clock)
    first = pages.put(7, product(1))
    client.delete(pages.key(7))  # expired, or evicted
    clock.now += 500
    again = pages.put(7, product(1))
    assert again == first  # same bytes, same ETag, same Last-Modified


def test_lazy_change_drops_the_page_and_dates_the_next_one(lab: Lab) -> None:
    client = lab.redis()
    clock = Clock(1_000_000.0)
    pages = PageCache(client, render=render, ttl_s=60, clock=clock)
    old = pages.put(7, product(1))
    clock.now = 1_000_010.5
    pages.changed(7, product(2, price=250), rerender=False)
    assert pages.get(7) is None
    clock.now = 1_000_020.0  # rendered later: Last-Modified stays the change's time
    new = pages.put(7, product(2, price=250))
    assert new.etag != old.etag
    assert new.validators.last_modified_s == 1_000_010
    assert new.validators.last_modified_strong
    assert not not_modified("GET", new.validators, if_none_match=[old.etag])


def test_two_changes_in_one_second_make_last_modified_weak(lab: Lab) -> None:
    client = lab.redis()
    clock = Clock(1_000_000.2)
    pages = PageCache(client, render=render, ttl_s=60, clock=clock)
    old = pages.put(7, product(1))
    clock.now = 1_000_000.7
    pages.changed(7, product(2, price=250), rerender=False)
    new = pages.put(7, product(2, price=250))
    assert new.validators.last_modified_s == old.validators.last_modified_s
    assert not new.validators.last_modified_strong
    # A client holding the old page and its date must not be told 304.
    assert not not_modified("GET", new.validators,
                            if_modified_since=[http_date(old.validators.last_modified_s or 0)])


def test_eager_change_renders_the_new_page_at_once(lab: Lab) -> None:
    client = lab.redis()
    pages = PageCache(client, render=render, ttl_s=60, clock=Clock(1_000_000.0))
    pages.put(7, product(1))
    pages.changed(7, product(2, price=250), rerender=True)
    cached = pages.get(7)
    assert cached is not None and cached.version == 2 and "250" in cached.html


def test_a_render_older_than_the_last_change_is_served_but_not_cached(lab: Lab) -> None:
    client = lab.redis()
    pages = PageCache(client, render=render, ttl_s=60, clock=Clock(1_000_000.0))
    pages.changed(7, product(3, price=300), rerender=False)
    late = pages.put(7, product(2, price=200))  # read before the update, stored after it
    assert pages.get(7) is None
    assert late.validators.last_modified_s is None  # the noted date belongs to version 3
    assert "Last-Modified" not in late.headers(CachePolicy())


def test_uncached_pages_are_rendered_and_dated_but_not_stored(lab: Lab) -> None:
    client = lab.redis()
    pages = PageCache(client, render=render, ttl_s=60, clock=Clock(1_000_000.0))
    served = pages.put(7, product(1), store=False)
    assert served.validators.last_modified_s == 1_000_000
    assert not client.exists(pages.key(7)) and client.exists(pages.change_key(7))


def test_a_deleted_product_leaves_nothing_behind(lab: Lab) -> None:
    client = lab.redis()
    pages = PageCache(client, render=render, ttl_s=60)
    pages.put(7, product(1))
    pages.changed(7, None, rerender=False)
    assert not client.exists(pages.key(7), pages.change_key(7))


def test_page_cache_control_is_set_when_the_api_starts(lab: Lab) -> None:
    """The API serves pages with the Cache-Control it was started with (exercise 20's)."""
    api = lab.shop_api("lazy", page_cache_control="public, max-age=7, s-maxage=70")
    page = httpx.get(f"{api.url}/products/1/page")
    assert page.headers["cache-control"] == "public, max-age=7, s-maxage=70"
