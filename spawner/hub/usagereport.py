"""The GPU-hours reports: ``/hub/usage`` (a page with a daily chart and a table) and
``/hub/api/usage`` (the same numbers as JSON, or CSV with ``format=csv``).

Query arguments, on both: ``from`` and ``to`` (UTC days, inclusive; default the last 30 days),
``by`` (the table: user, group, profile or model) and ``stack`` (the chart: user or group).
Admins see everyone; any other user sees their own usage only.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import Scope
from tornado import web

from spawner.core.usage import GROUP_BY, report_span, usage_report
from spawner.hub.accounting import accounting_for
from spawner.hub.dashboard import GPUDashboardHandler

TEMPLATE = "gpu_usage.html.j2"
CHART_WIDTH, CHART_HEIGHT = 900, 260
#: Colours of the chart's series, in order (then they repeat).
PALETTE = ("#1f6fd1", "#f37726", "#2e9e44", "#a23bc4", "#c43b3b", "#3bb7c4", "#8a6d3b", "#555")


class _ReportMixin:
    def _sees_everyone(self: Any) -> bool:
        """An admin, or a token holding ``admin:users`` on every user (a reporting service)."""
        if getattr(self.current_user, "admin", False):
            return True
        return bool(self.parsed_scopes.get("admin:users") == Scope.ALL)

    async def report(self: Any) -> dict[str, Any]:
        """The report the query asks for; a 400 with a sentence for a bad argument."""
        by = self.get_argument("by", "user")
        stack = self.get_argument("stack", "user")
        if by not in GROUP_BY:
            raise web.HTTPError(400, f"by must be one of {', '.join(GROUP_BY)}, not {by!r:.40}")
        if stack not in ("user", "group"):
            raise web.HTTPError(400, f"stack must be user or group, not {stack!r:.40}")
        now = time.time()
        try:
            start, end = report_span(
                self.get_argument("from", None), self.get_argument("to", None), now
            )
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        accounting = accounting_for(self.config)
        if accounting is None:
            raise web.HTTPError(503, "GPU-hours accounting is not running in this hub.")
        only = None if self._sees_everyone() else self.current_user.name
        await accounting.sync()
        store = accounting.store
        records = await store.run(lambda: store.records(start, end, only))
        summaries = await store.run(store.summaries) if only is None else []
        report = usage_report(
            records, summaries, start=start, end=end, by=by, stack=stack, now=now, user=only
        )
        report["scope"] = "everyone" if only is None else f"user {only}"
        return report


def chart(report: dict[str, Any]) -> dict[str, Any]:
    """The stacked bars of the report's chart, laid out for the page's SVG."""
    days: list[str] = report["chart"]["days"]
    series = report["chart"]["series"]
    totals = [sum(s["gpu_hours"][i] for s in series) for i in range(len(days))]
    top = max(totals, default=0.0) or 1.0
    step = CHART_WIDTH / max(len(days), 1)
    bars = []
    for i, day in enumerate(days):
        y = float(CHART_HEIGHT)
        for n, entry in enumerate(series):
            value = entry["gpu_hours"][i]
            if value <= 0:
                continue
            height = value / top * (CHART_HEIGHT - 10)
            y -= height
            bars.append(
                {
                    "x": round(i * step + step * 0.1, 2),
                    "y": round(y, 2),
                    "width": round(step * 0.8, 2),
                    "height": round(height, 2),
                    "color": PALETTE[n % len(PALETTE)],
                    "title": f"{day} · {entry['key']}: {value:.2f} GPU-hours",
                }
            )
    legend = [
        {
            "key": s["key"],
            "color": PALETTE[n % len(PALETTE)],
            "gpu_hours": round(sum(s["gpu_hours"]), 2),
        }
        for n, s in enumerate(series)
    ]
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "bars": bars,
        "legend": legend,
        "top": top,
    }


def as_csv(report: dict[str, Any]) -> str:
    """The report's table as CSV: the same rows and numbers as the JSON's ``rows``."""
    out = io.StringIO()
    writer = csv.writer(out)
    by = report["by"]
    writer.writerow([by, "gpu_hours", "records"])
    for row in report["rows"]:
        writer.writerow([row[by], row["gpu_hours"], row["records"]])
    return out.getvalue()


class UsagePageHandler(_ReportMixin, BaseHandler):  # type: ignore[misc]
    """``/hub/usage``: the chart, the table and links to the exports."""

    get_template = GPUDashboardHandler.get_template

    @web.authenticated
    async def get(self) -> None:
        report = await self.report()
        query = self.request.query
        html = await self.render_template(
            TEMPLATE,
            report=report,
            chart=chart(report),
            group_by=GROUP_BY,
            json_url=f"{self.hub.base_url}api/usage" + (f"?{query}" if query else ""),
            csv_url=f"{self.hub.base_url}api/usage?"
            + (f"{query}&" if query else "")
            + "format=csv",
        )
        self.finish(html)


class UsageAPIHandler(_ReportMixin, APIHandler):  # type: ignore[misc]
    """``/hub/api/usage``: the report as JSON, or its table as CSV (``format=csv``)."""

    @web.authenticated
    async def get(self) -> None:
        report = await self.report()
        self.set_header("Cache-Control", "no-store")
        if self.get_argument("format", "json") == "csv":
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            name = f"gpu-hours-{report['from']}-{report['to']}-by-{report['by']}.csv"
            self.set_header("Content-Disposition", f'attachment; filename="{name}"')
            self.finish(as_csv(report))
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(report))


def handlers() -> list[tuple[str, type]]:
    """For ``c.JupyterHub.extra_handlers``."""
    return [(r"/usage", UsagePageHandler), (r"/api/usage", UsageAPIHandler)]


__all__ = ["UsageAPIHandler", "UsagePageHandler", "as_csv", "chart", "handlers"]
