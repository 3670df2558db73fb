"""The forecasts' backtest error over every station and route of the demo province with a
year of generated history (the figures in docs/monitoring.md):

    python -m bench.backtest [YYYY-MM-DD]    # the day the forecasts are made (default today)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from channels import CHANNELS
from devstack import demo, embedded, history
from server.app import connect_mongo
from server.clock import local_today
from server.config import load_settings
from server.services.forecast import Forecasts
from server.storage.collections import ensure_schema


async def _measure(uri: str, today: dt.date) -> dict[str, list[float]]:
    settings = load_settings({"KEYUN_MONGO_URI": uri, "KEYUN_REDIS_URL": "redis://127.0.0.1:1",
                              "KEYUN_MONGO_DB": "backtest"})
    mongo = connect_mongo(settings, uri)
    db: Any = mongo.backtest
    try:
        await ensure_schema(db)
        await demo.ensure_demo(db, settings, channels=CHANNELS.all())
        await history.load_history(db, 365, today=today)
        forecasts = Forecasts(db)
        errors: dict[str, list[float]] = {}
        for kind, field in (("station", "station_id"), ("route", "route_id")):
            for ref in sorted(await db.flow_months.distinct(field)):
                got = await forecasts.forecast(kind, ref, 30, today=today)
                errors.setdefault(kind, []).append(got["model"]["backtest"]["mape"])
        return errors
    finally:
        await mongo.close()


def main() -> int:
    today = dt.date.fromisoformat(sys.argv[1]) if len(sys.argv) > 1 else local_today()
    with tempfile.TemporaryDirectory() as folder:
        mongo = embedded.mongo_server(Path(folder), memory=True)
        mongo.start()
        try:
            errors = asyncio.run(_measure(embedded.mongo_uri(mongo), today))
        finally:
            mongo.stop()
    print("| series | count | median MAPE | mean | best | worst |")
    print("|---|---|---|---|---|---|")
    for kind, values in errors.items():
        print(f"| {kind}s | {len(values)} | {statistics.median(values):.1%} | "
              f"{statistics.mean(values):.1%} | {min(values):.1%} | {max(values):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
