"""Turn run records (as ``--json`` prints them) into rich tables and Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cachelab.record import ChartRecord, RunRecord


def fmt(value: Any) -> str:
    """Numbers as people read them: thousands separated, ratios to three places."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) >= 0.001 else f"{value:.2e}"
    return str(value)


def environment_line(record: RunRecord) -> str:
    env, params = record["environment"], record["params"]
    redis = (f"redis-server {env['redis_version']} ({env.get('redis_source', '?')})"
             if "redis_version" in env else "no redis-server")
    latency = params.get("db_latency_ms", 0)
    db = (f"SQLite + {fmt(latency)} ms modelled round trip per query" if latency
          else "raw SQLite (no modelled latency)")
    backend = f"{env.get('backend', 'local')} backend"
    if "target" in env:  # an existing deployment: where, and the only keys it touched
        redis = f"Redis {env.get('redis_version', '?')} at {env['target']}"
        backend = (f"existing deployment, keys under {env.get('key_prefix', '?')} "
                   f"({env.get('keys_deleted', '?')} deleted at the end)")
    parts = [redis, db, f"seed {params.get('seed')}", backend]
    if not env.get("shop_database", True):  # runs saved before this was recorded: shown
        parts.remove(db)
    return " · ".join(parts)


def table_renderable(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
                     ) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style="bold")
    for i, column in enumerate(columns):
        # Fold rather than cut: an id or a name that does not fit wraps, whole.
        table.add_column(column, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    return table


BAR_WIDTH = 40
_SERIES_STYLES = ("cyan", "magenta", "yellow", "green", "blue", "red")


def chart_renderable(chart: ChartRecord) -> Table:
    """Horizontal bars, one row per x and one bar per series, scaled to the largest value."""
    values = [v for series in chart["series"].values() for v in series]
    top = max((abs(v) for v in values), default=0) or 1
    table = Table(title=chart["title"], title_justify="left", box=None, title_style="bold",
                  show_header=False, padding=(0, 1))
    table.add_column(chart["x_label"], justify="right")
    table.add_column("series")
    table.add_column("bar")
    table.add_column("value", justify="right")
    names = list(chart["series"])
    for i, x in enumerate(chart["x"]):
        for j, name in enumerate(names):
            value = chart["series"][name][i]
            bar = "█" * round(BAR_WIDTH * abs(value) / top) or "▏"
            table.add_row(fmt(x) if j == 0 else "", name if len(names) > 1 else "",
                          Text(bar, _SERIES_STYLES[j % len(_SERIES_STYLES)]),
                          f"{fmt(value)}{chart['unit']}")
    return table


def record_renderable(record: RunRecord) -> Group:
    """The whole terminal view of one run."""
    parts: list[Any] = [
        Text.assemble((f"{record['exercise']} ", "bold cyan"), (record["title"], "bold")),
        Text(environment_line(record), style="dim"),
    ]
    parts += [table_renderable(t["title"], t["columns"], t["rows"]) for t in record["tables"]]
    parts += [chart_renderable(c) for c in record.get("charts", [])]
    parts.append(table_renderable("Metrics", ["metric", "value"], list(record["metrics"].items())))
    checks = Table(title="Checks", title_justify="left", box=box.SIMPLE_HEAD, title_style="bold")
    checks.add_column("")
    checks.add_column("check")
    checks.add_column("measured")
    for check in record["checks"]:
        mark = Text("✓", "green") if check["passed"] else Text("✗", "bold red")
        checks.add_row(mark, check["name"], check["detail"])
    parts.append(checks)
    for note in record["notes"]:
        parts.append(Text(f"• {note}", style="italic"))
    passed = record["verdict"] == "pass"
    parts.append(Text.assemble(
        ("PASS" if passed else "FAIL", "bold green" if passed else "bold red"),
        f"  {sum(c['passed'] for c in record['checks'])}/{len(record['checks'])} checks"
        f" · {record['duration_s']:.2f}s · run {record['run_id']}"))
    return Group(*parts)


def print_record(console: Console, record: RunRecord) -> None:
    console.print(Panel(record_renderable(record), box=box.ROUNDED, expand=False))


def summary_table(records: Sequence[RunRecord], headlines: Sequence[str]) -> Table:
    """One row per run of ``run all``: verdict, duration and the headline metric."""
    table = Table(title="Summary", title_justify="left", box=box.SIMPLE_HEAD, title_style="bold")
    for column in ("exercise", "verdict", "duration", "headline metric"):
        table.add_column(column, overflow="fold")  # long names wrap, never lose letters
    table.add_column("value", justify="right")
    for record, headline in zip(records, headlines, strict=True):
        verdict = record["verdict"]
        value = record["metrics"].get(headline)
        table.add_row(record["exercise"],
                      Text(verdict, "green" if verdict == "pass" else "bold red"),
                      f"{record['duration_s']:.1f}s", headline,
                      fmt(value) if value is not None else "")
    return table


def to_markdown(record: RunRecord) -> str:
    """One run as Markdown, tables by tabulate."""
    from tabulate import tabulate

    out = [f"## {record['exercise']}: {record['title']}", "", environment_line(record), ""]
    for t in record["tables"]:
        out += [f"### {t['title']}", "",
                tabulate([[fmt(v) for v in row] for row in t["rows"]], t["columns"],
                         tablefmt="github", disable_numparse=True), ""]
    out += ["### Metrics", "",
            tabulate([[k, fmt(v)] for k, v in record["metrics"].items()], ["metric", "value"],
                     tablefmt="github", disable_numparse=True), ""]
    out += ["### Checks", "",
            tabulate([["pass" if c["passed"] else "FAIL", c["name"], c["detail"]]
                      for c in record["checks"]], ["", "check", "measured"],
                     tablefmt="github", disable_numparse=True), ""]
    for c in record.get("charts", []):
        out += [f"### {c['title']}", "",
                tabulate([[fmt(x), *(fmt(s[i]) for s in c["series"].values())]
                          for i, x in enumerate(c["x"])], [c["x_label"], *c["series"]],
                         tablefmt="github", disable_numparse=True), ""]
    out += [f"- {n}" for n in record["notes"]]
    out += ["", f"**Verdict: {record['verdict']}** ({record['duration_s']:.2f}s, "
                f"run {record['run_id']})", ""]
    return "\n".join(out)
