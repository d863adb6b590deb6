"""Request plans against the shop API: which profiles, products and sales reports a load
asks for, and how often."""

from __future__ import annotations

import random
from typing import Literal
from urllib.parse import urlencode

from cachelab.shop.database import ShopDatabase, report_parameter_sets

REPORT_SETS = 48  # distinct (period, city) sales reports a plan asks for


def shop_request_plan(db: ShopDatabase, count: int, *, rng: random.Random,
                      distribution: Literal["zipf", "uniform"], zipf_s: float,
                      report_share: float) -> list[str]:
    """Profiles and products in equal parts, plus ``report_share`` of sales reports."""
    from cachelab.workload.loadgen import Resource, request_plan

    lookups = (1 - report_share) / 2
    resources = [Resource.ids("/users/{}", db.size.users, lookups),
                 Resource.ids("/products/{}", db.size.products, lookups)]
    if report_share > 0:
        reports = tuple("/reports/sales?" + urlencode({"start": s, "end": e, "city": c})
                        for s, e, c in report_parameter_sets(REPORT_SETS))
        resources.append(Resource(reports, report_share))
    resources = [r for r in resources if r.weight > 0]
    return request_plan(resources, count, rng=rng,
                        distribution=distribution, zipf_s=zipf_s)

