"""The shop HTTP API over a real socket: strategies, bad input, `cachelab serve`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from cachelab.cli import app
from cachelab.lab import Lab
from cachelab.servers.ports import claim_port
from cachelab.shop.server import ApiServer


def test_lazy_api_misses_once_then_serves_from_redis_and_invalidates_on_update(
        lab: Lab) -> None:
    api = lab.shop_api("lazy")
    with httpx.Client(base_url=api.url) as http:
        before = api.stats()["db_queries"]
        first, second = http.get("/users/3"), http.get("/users/3")
        assert first.status_code == second.status_code == 200
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        assert first.json() == second.json()
        assert api.stats()["db_queries"] - before == 1  # only the miss reached the database

        updated = http.put("/users/3", json={"bio": "moved to Lisbon"})
        assert updated.status_code == 200
        after = http.get("/users/3")
        assert after.headers["x-cache"] == "miss"  # the update deleted the cached profile
        assert after.json()["bio"] == "moved to Lisbon"
        assert after.json()["version"] == first.json()["version"] + 1


def test_eager_api_serves_every_product_from_the_preloaded_cache(lab: Lab) -> None:
    api = lab.shop_api("eager")
    with httpx.Client(base_url=api.url) as http:
        before = api.stats()["db_queries"]
        answers = [http.get(f"/products/{i}") for i in range(1, 21)]
        assert {a.headers["x-cache"] for a in answers} == {"hit"}
        assert api.stats()["db_queries"] == before

        changed = http.put("/products/5", json={"price_cents": 1234, "stock": 9})
        assert changed.status_code == 200
        again = http.get("/products/5")
        assert again.headers["x-cache"] == "hit"  # written through, not deleted
        assert (again.json()["price_cents"], again.json()["stock"]) == (1234, 9)


def test_uncached_api_sends_every_read_to_the_database(lab: Lab) -> None:
    api = lab.shop_api("none")
    with httpx.Client(base_url=api.url) as http:
        before = api.stats()["db_queries"]
        answers = [http.get("/posts/1/comments") for _ in range(5)]
        assert {a.headers["x-cache"] for a in answers} == {"bypass"}
        assert api.stats()["db_queries"] - before == 5
        report = http.get("/reports/sales", params={"start": "2024-01-01",
                                                    "end": "2024-12-31", "city": "Osaka"})
        assert report.status_code == 200 and isinstance(report.json(), list)


def test_a_comment_reaches_the_cached_list(lab: Lab) -> None:
    api = lab.shop_api("lazy")
    with httpx.Client(base_url=api.url) as http:
        http.get("/posts/2/comments")
        posted = http.post("/posts/2/comments", json={"user_id": 1, "body": "first!"})
        assert posted.status_code == 201
        latest = http.get("/posts/2/comments").json()
        assert latest[0]["id"] == posted.json()["id"] and latest[0]["body"] == "first!"


# The product page route (exercise 20): validators, 304s, the page cache in Redis.


def test_page_route_answers_304_from_redis_without_the_database(lab: Lab) -> None:
    api = lab.shop_api("lazy")
    with httpx.Client(base_url=api.url) as http:
        first = http.get("/products/4/page")
        assert first.status_code == 200 and first.headers["x-cache"] == "miss"
        assert first.headers["content-type"].startswith("text/html")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        assert etag.startswith('"') and "max-age=" in first.headers["cache-control"]

        before = api.stats()["db_queries"]
        answers = [http.get("/products/4/page", headers=headers) for headers in (
            {"If-None-Match": etag}, {"If-Modified-Since": modified},
            {"If-None-Match": etag, "If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})]
        assert [a.status_code for a in answers] == [304, 304, 304]
        assert api.stats()["db_queries"] == before
        for answer in answers:
            assert answer.content == b"" and answer.headers["x-cache"] == "hit"
            assert "content-length" not in answer.headers or answer.headers["content-length"] == "0"
            assert [answer.headers[h] for h in ("etag", "cache-control", "last-modified")] == [
                first.headers[h] for h in ("etag", "cache-control", "last-modified")]

        # If-None-Match decides alone: a stale tag gets the page even with a current date.
        full = http.get("/products/4/page",
                        headers={"If-None-Match": '"stale"', "If-Modified-Since": modified})
        assert full.status_code == 200 and full.content == first.content


def test_a_product_update_gives_its_page_a_new_etag_at_once(lab: Lab) -> None:
    api = lab.shop_api("lazy")
    with httpx.Client(base_url=api.url) as http:
        old = http.get("/products/9/page")
        assert http.put("/products/9", json={"price_cents": 4321, "stock": 3}).status_code == 200
        new = http.get("/products/9/page", headers={"If-None-Match": old.headers["etag"]})
        assert new.status_code == 200 and new.headers["x-cache"] == "miss"
        assert new.headers["etag"] != old.headers["etag"]
        assert "43.21 EUR" in new.text and "3 in stock" in new.text
        # The other pages stay cached.
        http.get("/products/10/page")
        assert http.get("/products/10/page").headers["x-cache"] == "hit"


def test_eager_api_renders_a_changed_page_with_the_update(lab: Lab) -> None:
    api = lab.shop_api("eager")
    with httpx.Client(base_url=api.url) as http:
        http.get("/products/2/page")
        http.put("/products/2", json={"price_cents": 999, "stock": 1})
        before = api.stats()["db_queries"]
        page = http.get("/products/2/page")
        assert page.headers["x-cache"] == "hit" and "9.99 EUR" in page.text
        assert api.stats()["db_queries"] == before


def test_uncached_api_renders_every_page_but_still_answers_304(lab: Lab) -> None:
    api = lab.shop_api("none")
    with httpx.Client(base_url=api.url) as http:
        first = http.get("/products/5/page")
        before = api.stats()["db_queries"]
        again = http.get("/products/5/page", headers={"If-None-Match": first.headers["etag"]})
        assert (first.headers["x-cache"], again.headers["x-cache"]) == ("bypass", "bypass")
        assert again.status_code == 304 and again.content == b""
        assert api.stats()["db_queries"] - before == 1  # validated against a fresh render


def test_bad_page_requests_get_a_4xx(lab: Lab) -> None:
    api = lab.shop_api("lazy")
    with httpx.Client(base_url=api.url) as http:
        got = [http.get(path).status_code for path in
               ("/products/abc/page", "/products/99999999/page", "/products/1.5/page")]
        odd = http.get("/products/1/page", headers={"If-None-Match": "not-a-tag",
                                                    "If-Modified-Since": "whenever"})
    assert got == [422, 404, 422]
    assert odd.status_code == 200  # malformed validators: served as if unconditional


BAD_REQUESTS = [
    ("GET", "/no/such/path", None, 404),
    ("GET", "/users/abc", None, 422),
    ("GET", "/users/99999999", None, 404),
    ("GET", "/products/1.5", None, 422),
    ("GET", "/products/1/page/extra", None, 404),
    ("GET", "/reports/sales?start=yesterday&end=2024-01-01&city=Osaka", None, 422),
    ("GET", "/reports/sales", None, 422),
    ("PUT", "/products/1", {"price_cents": -5, "stock": 1}, 422),
    ("PUT", "/products/99999999", {"price_cents": 5, "stock": 1}, 404),
    ("PUT", "/users/1", {"nothing": 1}, 422),
    ("POST", "/posts/99999999/comments", {"user_id": 1, "body": "x"}, 404),
]


def test_bad_requests_get_a_4xx_never_a_500(lab: Lab) -> None:
    api = lab.shop_api("lazy")
    with httpx.Client(base_url=api.url) as http:
        answers = {(method, path): http.request(method, path, json=body)
                   for method, path, body, _ in BAD_REQUESTS}
    got = {request: (a.status_code, "Traceback" in a.text) for request, a in answers.items()}
    assert got == {(method, path): (status, False)
                   for method, path, _, status in BAD_REQUESTS}


def test_the_api_process_is_gone_after_the_lab() -> None:
    with Lab() as lab:
        api = lab.shop_api("lazy")
        process = psutil.Process(api.pid)
        assert httpx.get(f"{api.url}/health").json()["status"] == "ok"
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


def test_serve_answers_then_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    """As a real subprocess: the API, its Redis and its database, then Ctrl-C."""
    claim = claim_port()
    port = claim.port
    claim.release()
    serve = subprocess.Popen([sys.executable, "-m", "cachelab", "serve", "--port", str(port),
                              "--scale", "0.2", "--caching", "eager"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert serve.poll() is None, serve.communicate()
                time.sleep(0.05)
        assert health.json() == {"status": "ok", "caching": "eager"}
        spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()
        assert "/users/{user_id}" in spec["paths"]
        children = psutil.Process(serve.pid).children(recursive=True)
        assert any("redis-server" in c.name() for c in children)
    finally:
        serve.send_signal(signal.SIGINT)
        out, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    assert f"http://127.0.0.1:{port}" in out and "Stopped" in out
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_serve_on_a_busy_port_is_a_usage_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port}" in result.stderr and "--port" in result.stderr


def test_a_fresh_page_is_never_modified_after_its_date(lab: Lab) -> None:
    """Each answer is dated when sent (RFC 9110 8.8.2.1: Last-Modified <= Date)."""
    from email.utils import parsedate_to_datetime

    api = lab.shop_api("lazy")
    with httpx.Client(base_url=api.url) as http:
        for product in range(1, 31):
            http.put(f"/products/{product}", json={"price_cents": 100 + product, "stock": 1})
            page = http.get(f"/products/{product}/page")
            assert len(page.headers.get_list("date")) == 1
            assert (parsedate_to_datetime(page.headers["last-modified"])
                    <= parsedate_to_datetime(page.headers["date"]))


# ---------------------------------------------------------------- the rate-limited API


def _limited_api(lab: Lab, rate_limit: str) -> ApiServer:
    return lab.shop_api("lazy", rate_limit=rate_limit)


def test_over_the_limit_the_api_answers_429_with_retry_after_and_ratelimit_headers(
        lab: Lab) -> None:
    api = _limited_api(lab, "sliding_log:3/10s")
    with httpx.Client(base_url=api.url, headers={"X-User-Id": "alice"}) as http:
        answers = [http.get("/products/1") for _ in range(4)]
        other_user = http.get("/products/1", headers={"X-User-Id": "bob"})
    admitted, refused = answers[:3], answers[3]
    assert [a.status_code for a in admitted] == [200, 200, 200]
    assert [a.headers["ratelimit-remaining"] for a in admitted] == ["2", "1", "0"]
    assert all(a.headers["ratelimit-limit"] == "3" and "retry-after" not in a.headers
               and 1 <= int(a.headers["ratelimit-reset"]) <= 10 for a in admitted)
    assert refused.status_code == 429 and "x-cache" not in refused.headers
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert refused.headers["ratelimit-remaining"] == "0"
    assert "sliding_log:3/10s" in refused.json()["detail"]
    assert other_user.status_code == 200  # each user has a quota of their own
    assert other_user.headers["ratelimit-remaining"] == "2"


def test_without_a_user_the_limit_is_per_ip_and_health_is_never_limited(lab: Lab) -> None:
    api = _limited_api(lab, "fixed:2/1h")
    with httpx.Client(base_url=api.url) as http:
        statuses = [http.get("/users/1").status_code for _ in range(3)]
        health = [http.get("/health") for _ in range(5)]
        stats = http.get("/_lab/stats")
    assert statuses == [200, 200, 429]
    assert {h.status_code for h in health} == {200} and stats.status_code == 200
    assert not any("ratelimit-limit" in h.headers for h in health)


def test_a_malformed_user_id_is_a_400_not_a_500(lab: Lab) -> None:
    api = _limited_api(lab, "token_bucket:5/1s")
    users: list[str | bytes] = ["", "a b", "x" * 65, "{tag}", "é".encode()]
    with httpx.Client(base_url=api.url) as http:
        answers = [http.get("/products/1", headers={"X-User-Id": user}) for user in users]
    assert [a.status_code for a in answers] == [400] * len(users)
    assert all("X-User-Id" in a.json()["detail"] for a in answers)


def test_a_bad_rate_limit_is_refused_before_anything_starts(lab: Lab) -> None:
    with pytest.raises(ValueError, match="ALGORITHM:LIMIT/WINDOW"):
        ApiServer(lab.redis_server("r"), lab.shop(), caching="lazy", log_dir=lab.workdir,
                  rate_limit="20 per second")
    result = CliRunner().invoke(app, ["serve", "--rate-limit", "leaky:20/1s"])
    assert result.exit_code == 2
    assert "ALGORITHM:LIMIT/WINDOW" in result.stderr and "--rate-limit" in result.stderr
