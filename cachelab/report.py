"""Reports of saved runs: Markdown (tabulate) or one self-contained HTML file (pygal SVG)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from cachelab import __version__
from cachelab.record import RunRecord
from cachelab.render import environment_line, fmt, to_markdown

LATENCY_SERIES = ("p50 ms", "p95 ms", "p99 ms")


def markdown_report(records: Sequence[RunRecord]) -> str:
    head = [f"# cachelab report ({len(records)} run{'s' * (len(records) != 1)})", "",
            f"Made by cachelab {__version__} on "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", ""]
    parts = []
    for record in records:
        params = ", ".join(f"{k}={v}" for k, v in record["params"].items())
        parts.append(to_markdown(record).replace(
            "\n\n", f"\n\nParameters: {params}. Started {record['started_at']}.\n\n", 1))
    return "\n".join(head) + "\n".join(parts)


def _svg(chart: Any) -> str:
    return str(chart.render(is_unicode=True, disable_xml_declaration=True))


def _style() -> Any:
    from pygal.style import CleanStyle

    return CleanStyle


def _charts(record: RunRecord) -> list[str]:
    """SVG charts: the run's own charts, and every latency table as grouped bars."""
    import pygal

    config = {"js": [], "width": 720, "height": 300, "style": _style(),  # js=[]: no network
              "legend_at_bottom": True, "print_values": False}
    svgs = []
    for c in record.get("charts", []):
        chart = pygal.Bar(title=c["title"], x_title=c["x_label"], **config)
        chart.x_labels = [str(x) for x in c["x"]]
        for name, values in c["series"].items():
            chart.add(name, values)
        svgs.append(_svg(chart))
    for t in record["tables"]:
        if all(column in t["columns"] for column in LATENCY_SERIES):
            chart = pygal.Bar(title=f"{t['title']}: latency percentiles",
                              y_title="milliseconds", **config)
            chart.x_labels = list(LATENCY_SERIES)
            for row in t["rows"]:
                chart.add(str(row[0]),
                          [row[t["columns"].index(column)] for column in LATENCY_SERIES])
            svgs.append(_svg(chart))
    return svgs


def _cell(value: Any) -> str:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td{' class=num' if number else ''}>{html.escape(fmt(value))}</td>"


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-top: 1px solid #ccc; padding-top: 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .2rem .6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #1a7f37; font-weight: bold; } .fail { color: #cf222e; font-weight: bold; }
.env { color: #666; font-size: .9rem; } figure { margin: 0 0 1rem; }
"""


def html_report(records: Sequence[RunRecord]) -> str:
    """One self-contained page: inline CSS and SVG, nothing fetched from anywhere."""
    sections = []
    for record in records:
        verdict = record["verdict"]
        checks = [["✓" if c["passed"] else "✗", c["name"], c["detail"]]
                  for c in record["checks"]]
        parts = [
            f"<h2 id=\"{html.escape(record['run_id'])}\">{html.escape(record['exercise'])}: "
            f"{html.escape(record['title'])} <span class=\"{verdict}\">{verdict.upper()}"
            "</span></h2>",
            f"<p class=\"env\">{html.escape(environment_line(record))}. Run "
            f"{html.escape(record['run_id'])}, started {html.escape(record['started_at'])}, "
            f"{record['duration_s']:.2f}s.</p>",
            "<h3>Parameters</h3>", _table(["parameter", "value"], record["params"].items()),
            "<h3>Checks</h3>", _table(["", "check", "measured"], checks),
        ]
        parts += [f"<figure>{svg}</figure>" for svg in _charts(record)]
        parts += [f"<h3>{html.escape(t['title'])}</h3>" + _table(t["columns"], t["rows"])
                  for t in record["tables"]]
        parts += ["<h3>Metrics</h3>", _table(["metric", "value"], record["metrics"].items())]
        parts += ["<h3>Environment</h3>",
                  _table(["", "value"], record["environment"].items())]
        parts += [f"<p>{html.escape(note)}</p>" for note in record["notes"]]
        sections.append("<section>" + "".join(parts) + "</section>")
    index = "".join(f"<li><a href=\"#{html.escape(r['run_id'])}\">{html.escape(r['exercise'])}"
                    f"</a>: <span class=\"{r['verdict']}\">{r['verdict']}</span></li>"
                    for r in records)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>cachelab report</title><style>{_CSS}</style></head><body>"
            f"<h1>cachelab report</h1><p class=\"env\">{len(records)} run(s), made by cachelab "
            f"{__version__} on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"
            f"<ul>{index}</ul>{''.join(sections)}</body></html>")
