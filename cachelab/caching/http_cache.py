"""HTTP caching of rendered pages: validators, Cache-Control and conditional requests.

The origin server's side of RFC 9110 (validators, conditional GET) and RFC 9111
(Cache-Control), plus :class:`PageCache`, which keeps each rendered page in Redis
with its validators so that a conditional request is answered from Redis alone,
and which a product change invalidates (lazy) or re-renders (eager).

Last-Modified needs the time a product last changed, and the shop keeps none (its
products have a ``version``, no ``updated_at``). So the page cache records it: for
each product, the version its pages last saw and when that version was first seen,
either by the update that made it or by the first render of a version no update
announced. That record has no TTL, so a page that expires and is rendered again keeps
its Last-Modified; only a product change moves it.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, cast

from cachelab.caching.cache_aside import CacheStats

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

#: The environment variable a shop API reads its page Cache-Control from.
#: The key prefix of the shop API's pages.
PAGE_NAMESPACE = "api:page"


# ------------------------------------------------------------------ Cache-Control


@dataclass(frozen=True)
class CachePolicy:
    """How long caches may keep a page (RFC 9111 §5.2.2, RFC 5861).

    Attributes:
        max_age_s: freshness for every cache, a browser's or a crawler's own.
        s_maxage_s: freshness for shared caches (CDNs, proxies) instead of max-age.
        stale_while_revalidate_s: how long past freshness a cache may serve the page
            while it revalidates in the background.
        public: any cache may store it, even for an authenticated request.
    """

    max_age_s: int = 60
    s_maxage_s: int | None = 300
    stale_while_revalidate_s: int | None = 30
    public: bool = True

    def __post_init__(self) -> None:
        for name in ("max_age_s", "s_maxage_s", "stale_while_revalidate_s"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number of seconds >= 0, not {value!r}")

    def header(self) -> str:
        """The Cache-Control field value, e.g. ``public, max-age=60, s-maxage=300``."""
        parts = ["public"] if self.public else []
        parts.append(f"max-age={self.max_age_s}")
        if self.s_maxage_s is not None:
            parts.append(f"s-maxage={self.s_maxage_s}")
        if self.stale_while_revalidate_s is not None:
            parts.append(f"stale-while-revalidate={self.stale_while_revalidate_s}")
        return ", ".join(parts)

    @classmethod
    def parse(cls, value: str) -> CachePolicy:
        """The policy a Cache-Control value states (max-age is required)."""
        directives = parse_cache_control(value)
        unknown = set(directives) - {"public", "max-age", "s-maxage", "stale-while-revalidate"}
        if unknown or "max-age" not in directives:
            raise ValueError(f"Cache-Control {value!r}: give max-age and only public, "
                             "s-maxage, stale-while-revalidate besides")

        def seconds(name: str) -> int | None:
            raw = directives.get(name)
            if name in directives and (raw is None or not raw.isdigit()):
                raise ValueError(f"Cache-Control {value!r}: {name} needs whole seconds")
            return None if raw is None else int(raw)

        max_age = seconds("max-age")
        assert max_age is not None
        return cls(max_age_s=max_age, s_maxage_s=seconds("s-maxage"),
                   stale_while_revalidate_s=seconds("stale-while-revalidate"),
                   public="public" in directives)



# name, then optionally = and a token or a quoted string
_DIRECTIVE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*'
                        r'(?:=\s*("(?:[^"\\]|\\.)*"|[^,]*))?\s*')


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Directives of a Cache-Control value, names lower-cased, quoted values unquoted.

    A directive without a value maps to None; a repeated one keeps its first value.
    """
    directives: dict[str, str | None] = {}
    for part in _split_list(value or ""):
        match = _DIRECTIVE.fullmatch(part)
        if not match:
            continue
        name, raw = match.group(1).lower(), match.group(2)
        if raw is not None:
            raw = raw.strip()
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        directives.setdefault(name, raw)
    return directives


def _split_list(value: str) -> list[str]:
    """Split a comma-separated field value, leaving commas inside quoted strings alone."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


# ------------------------------------------------------------------ validators


def strong_etag(body: bytes | str) -> str:
    """A strong entity tag from the content itself: equal bytes, equal tag (RFC 9110 §8.8.3)."""
    data = body.encode() if isinstance(body, str) else body
    return f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def http_date(epoch_s: float) -> str:
    """An IMF-fixdate, as HTTP sends dates: ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return formatdate(epoch_s, usegmt=True)


_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"(\d{2}):(\d{2}):(\d{2})"
_IMF_FIXDATE = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{{2}}) {_MONTH} (\d{{4}}) "
                          rf"{_TIME} GMT")
_RFC850 = re.compile(rf"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, (\d{{2}})-{_MONTH}-(\d{{2}}) "
                     rf"{_TIME} GMT")
_ASCTIME = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})")


def parse_http_date(value: str, *, now_s: float | None = None) -> int | None:
    """Seconds since the epoch of an HTTP-date in any of its three forms (RFC 9110
    §5.6.7), or None when ``value`` is not one."""
    value = value.strip()
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hh, mm, ss = match.groups()
    elif match := _ASCTIME.fullmatch(value):
        month, day, hh, mm, ss, year = match.groups()
    elif match := _RFC850.fullmatch(value):
        day, month, yy, hh, mm, ss = match.groups()
        # A two-digit year more than 50 years ahead is the latest such year in the past.
        this_year = time.gmtime(time.time() if now_s is None else now_s).tm_year
        year_n = this_year - this_year % 100 + int(yy)
        year = str(year_n - 100 if year_n > this_year + 50 else year_n)
    else:
        return None
    fields = (int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss))
    if not (1 <= fields[2] <= calendar.monthrange(fields[0], fields[1])[1]
            and fields[3] < 24 and fields[4] < 60 and fields[5] < 61):
        return None
    return calendar.timegm((*fields, 0, 0, 0))


# One element of an If-None-Match list: ``*`` or an entity tag, then a comma or the end.
_TAG_ITEM = re.compile(r'[ \t]*(\*|(?:W/)?"[\x21\x23-\x7e\x80-\xff]*")[ \t]*(?:,|$)')


def parse_entity_tags(values: Iterable[str]) -> list[str] | None:
    """The entity tags of If-None-Match lines (``"*"`` stands for a star), or None when
    any element is malformed."""
    text = ",".join(values)
    tags: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos] in " \t,":  # empty list elements are allowed (RFC 9110 §5.6.1)
            pos += 1
            continue
        match = _TAG_ITEM.match(text, pos)
        if not match:
            return None
        tags.append(match.group(1))
        pos = match.end()
    return tags


def weak_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: the opaque tags are equal, W/ or not."""
    return a.removeprefix("W/") == b.removeprefix("W/")


@dataclass(frozen=True)
class Validators:
    """What a client can validate a page with.

    Attributes:
        etag: the strong entity tag of the page's bytes.
        last_modified_s: when the page last changed, in whole seconds (None: unknown).
        last_modified_strong: no other change happened in that second, so a date equal
            to it proves the page unchanged (RFC 9110 §8.8.2.2).
    """

    etag: str
    last_modified_s: int | None
    last_modified_strong: bool = True


def not_modified(method: str, validators: Validators, *, if_none_match: Sequence[str] = (),
                 if_modified_since: Sequence[str] = ()) -> bool:
    """True when a GET or HEAD with these header lines must be answered 304 (RFC 9110 §13.2.2).

    If-None-Match, when present, decides alone (weak comparison; ``*`` matches any
    current page); only without it is If-Modified-Since evaluated, and it is ignored
    unless it is exactly one valid HTTP-date.
    """
    if method.upper() not in ("GET", "HEAD"):
        return False
    if if_none_match:
        tags = parse_entity_tags(if_none_match)
        # A malformed field cannot match; the request is served as if unconditional.
        return bool(tags) and any(t == "*" or weak_match(t, validators.etag) for t in tags or ())
    if len(if_modified_since) != 1 or validators.last_modified_s is None:
        return False
    since = parse_http_date(if_modified_since[0])
    if since is None:
        return False
    if validators.last_modified_s < since:
        return True
    # Equal seconds prove nothing if the page changed twice within that second.
    return validators.last_modified_s == since and validators.last_modified_strong


# ------------------------------------------------------------------ the page cache


@dataclass(frozen=True)
class Page:
    """A rendered page with its validators and the product version it shows."""

    html: str
    validators: Validators
    version: int

    @property
    def etag(self) -> str:
        return self.validators.etag

    def headers(self, policy: CachePolicy) -> dict[str, str]:
        """The caching headers of its 200, and of a 304 for it (RFC 9110 §15.4.5)."""
        headers = {"Cache-Control": policy.header(), "ETag": self.validators.etag}
        if self.validators.last_modified_s is not None:
            headers["Last-Modified"] = http_date(self.validators.last_modified_s)
        return headers


# Shared by both scripts: note that the product reached ``version`` at ``now`` unless
# that version (or a later one) is already noted; returns the note as it stands.
_NOTE_CHANGE = """
local function note_change(key, version, now)
  local noted = redis.call('HMGET', key, 'version', 'at', 'strong')
  local noted_version = tonumber(noted[1])
  if noted_version and version <= noted_version then
    return noted_version, noted[2], noted[3]
  end
  local strong = '1'
  if noted[2] and math.floor(tonumber(noted[2])) == math.floor(tonumber(now)) then
    strong = '0'  -- two versions within one second: Last-Modified cannot tell them apart
  end
  redis.call('HSET', key, 'version', version, 'at', now, 'strong', strong)
  return version, now, strong
end
"""

# KEYS: page, change note. ARGV: html, etag, version, now, ttl_ms, store (1/0).
# Stores the page unless it shows an older version than the last change noted (a slow
# render that lost a race with an update must not overwrite the newer page).
_STORE = _NOTE_CHANGE + """
local version = tonumber(ARGV[3])
local noted_version, at, strong = note_change(KEYS[2], version, ARGV[4])
if version < noted_version then return false end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'html', ARGV[1], 'etag', ARGV[2], 'version', version,
             'at', at, 'strong', strong)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return {at, strong}
"""

# KEYS: page, change note. ARGV: version, now. Notes the change and drops the page.
_CHANGED = _NOTE_CHANGE + """
note_change(KEYS[2], tonumber(ARGV[1]), ARGV[2])
return redis.call('DEL', KEYS[1])
"""


class PageCache:
    """Rendered pages in Redis, one hash each, with their validators.

    ``namespace:<id>`` holds a page (html, etag, version, when its version was first
    seen) with a TTL; ``namespace:<id>:changed`` notes the product's latest version and
    when the pages first saw it, with no TTL (see the module docstring).

    Args:
        client: a redis-py client with ``decode_responses=True``.
        render: turns a product (with its ``version``) into the page's HTML.
        ttl_s: how long a rendered page stays in Redis.
        policy: the Cache-Control pages are served with.
        namespace: the key prefix.
        clock: seconds since the epoch (tests may pass their own).
    """

    def __init__(self, client: redis.Redis, *, render: Callable[[dict[str, Any]], str],
                 ttl_s: float, policy: CachePolicy | None = None,
                 namespace: str = PAGE_NAMESPACE, clock: Callable[[], float] = time.time) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.client = client
        self.render = render
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.policy = policy or CachePolicy()
        self.namespace = namespace
        self.clock = clock
        self.stats = CacheStats()
        self._store = client.register_script(_STORE)
        self._changed = client.register_script(_CHANGED)

    def key(self, item: object) -> str:
        return f"{self.namespace}:{item}"

    def change_key(self, item: object) -> str:
        return f"{self.namespace}:{item}:changed"

    def get(self, item: object) -> Page | None:
        """The cached page, in one round trip; None on a miss."""
        fields = cast("dict[str, str]", self.client.hgetall(self.key(item)))
        if not fields:
            self.stats.count("misses")
            return None
        self.stats.count("hits")
        return _page(fields)

    def put(self, item: object, product: dict[str, Any], *, store: bool = True) -> Page:
        """Render ``product`` and, with ``store``, cache the page; returns the page to serve.

        A render older than the product's last noted change is served but not cached,
        and without Last-Modified: the noted time belongs to the newer version.
        """
        html = self.render(product)
        version = int(product["version"])
        noted = self._store(keys=[self.key(item), self.change_key(item)],
                            args=[html, strong_etag(html), version, repr(self.clock()),
                                  self.ttl_ms, int(store)])
        if noted is None:
            return Page(html, Validators(strong_etag(html), None), version)
        at, strong = noted
        return Page(html, Validators(strong_etag(html), int(float(at)), strong == "1"), version)

    def changed(self, item: object, product: dict[str, Any] | None, *, rerender: bool) -> None:
        """After ``product`` was written: note the change, then drop the page (lazy) or
        render and store it now (``rerender``, eager). ``None``: the product is gone."""
        self.stats.count("invalidations")
        if product is None:
            self.client.delete(self.key(item), self.change_key(item))
        elif rerender:
            self.put(item, product)
        else:
            self._changed(keys=[self.key(item), self.change_key(item)],
                          args=[int(product["version"]), repr(self.clock())])


def _page(fields: Mapping[str, str]) -> Page:
    return Page(fields["html"],
                Validators(fields["etag"], int(float(fields["at"])), fields["strong"] == "1"),
                int(fields["version"]))


# ------------------------------------------------------------------ conditional requests


def conditional_request_cases(etag: str, last_modified: str
                              ) -> list[tuple[str, dict[str, str], int]]:
    """Each kind of conditional GET RFC 9110 describes (§13.1, §13.2.2), for a page with
    these validators: ``(label, request headers, the status it must get)``."""
    seconds = parse_http_date(last_modified)
    if seconds is None:
        raise ValueError(f"Last-Modified {last_modified!r} is not an HTTP-date")
    day = 86_400
    rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(seconds))
    return [
        ("If-None-Match: its ETag", {"If-None-Match": etag}, 304),
        ("If-None-Match: W/ its ETag (weak comparison)", {"If-None-Match": f"W/{etag}"}, 304),
        ('If-None-Match: "other", its ETag', {"If-None-Match": f'"other", {etag}'}, 304),
        ("If-None-Match: *", {"If-None-Match": "*"}, 304),
        ('If-None-Match: "other"', {"If-None-Match": '"other"'}, 200),
        ('If-None-Match: "other" + If-Modified-Since: its Last-Modified',
         {"If-None-Match": '"other"', "If-Modified-Since": last_modified}, 200),
        ("If-None-Match: its ETag + If-Modified-Since: a day earlier",
         {"If-None-Match": etag, "If-Modified-Since": http_date(seconds - day)}, 304),
        ("If-Modified-Since: its Last-Modified", {"If-Modified-Since": last_modified}, 304),
        ("If-Modified-Since: its Last-Modified, RFC 850 form", {"If-Modified-Since": rfc850},
         304),
        ("If-Modified-Since: a day earlier", {"If-Modified-Since": http_date(seconds - day)},
         200),
        ("If-Modified-Since: not a date", {"If-Modified-Since": "yesterday"}, 200),
    ]
