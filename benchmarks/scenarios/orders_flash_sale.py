"""Flash sale (issue 3): one SKU, 1,000 units at the warehouse, 5,000 buyers (each one order of one
unit, its own Idempotency-Key) from 200 concurrent connections. Time to sell out and reservations/s are
taken from the database (first to last reservation movement), oversell is checked there too (placed
orders, reserved units and on-hand must agree). Its ceiling is pgbench's single-row UPDATE on the same
cluster: one hot row written by every transaction. Aim: ratio >= 1.0, which takes reserving for many
orders per write of the row (group placement).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field

import asyncpg
import orjson

from benchmarks.loadgen import LoadSpec, Request
from benchmarks.scenarios.base import Context, Record
from benchmarks.scenarios.correctness import check_orders
from benchmarks.scenarios.orders_data import WAREHOUSE, orders_data

UNITS, BUYERS, CONCURRENCY = 1000, 5000, 200
AIM_RATIO = 1.0
JSON = {"Content-Type": "application/json"}


@dataclass
class FlashBuyers:
    sku: str
    buyers: int
    rng: random.Random = field(default_factory=random.Random)
    prefix: str = ""
    sent: int = 0

    def start(self, rng: random.Random, worker_id: str) -> None:
        self.rng, self.prefix = rng, f"flash-{worker_id}-{rng.getrandbits(32):08x}"

    def next(self) -> Request:
        # After the 5,000 buyers the load keeps coming back as the same buyers retrying: replays.
        self.sent += 1
        buyer = self.sent if self.sent <= self.buyers else self.rng.randint(1, self.buyers)
        body = {"channel": "online", "currency": "EUR", "lines": [{"sku": self.sku, "qty": 1, "unit_price": "10.00"}],
                "fulfillment": {"type": "ship"}}
        return Request("POST", "/v1/orders", orjson.dumps(body), {**JSON, "Idempotency-Key": f"{self.prefix}-{buyer}"})


async def _stock_flash_sku(dsn: str) -> str:
    sku = f"FLASH-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO inventory.skus (sku, name, price, currency) VALUES ($1, 'flash', 10, 'EUR')",
                           sku)
        await conn.execute("SELECT inventory.apply_movement($1, $2, 'receipt', $3, 0, NULL, 'flash sale', 'bench')",
                           sku, WAREHOUSE, UNITS)
    finally:
        await conn.close()
    return sku


async def _outcome(dsn: str, sku: str) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        level = await conn.fetchrow("SELECT sum(on_hand) AS on_hand, sum(reserved) AS reserved"
                                    " FROM inventory.stock_levels WHERE sku = $1", sku)
        span = await conn.fetchrow("SELECT count(*) AS n, extract(epoch FROM max(created_at) - min(created_at)) AS s"
                                   " FROM inventory.stock_movements WHERE sku = $1 AND kind = 'reservation'", sku)
        ordered = await conn.fetchval("SELECT coalesce(sum(qty), 0) FROM orders.order_lines WHERE sku = $1", sku)
    finally:
        await conn.close()
    return {"on_hand": int(level["on_hand"]), "reserved": int(level["reserved"]), "ordered": int(ordered),
            "reservations": int(span["n"]), "sell_out_s": float(span["s"] or 0)}


@dataclass(frozen=True)
class OrdersFlashSaleScenario:
    name: str = "orders.flash_sale"
    services: tuple[str, ...] = ("orders",)

    def run(self, ctx: Context) -> list[Record]:
        orders_data(ctx)
        sku = asyncio.run(_stock_flash_sku(ctx.stack.dsn))
        seconds = 4.0 if ctx.quick else 6.0
        spec = LoadSpec(ctx.url("orders"), FlashBuyers(sku, BUYERS), CONCURRENCY, seconds, warmup_s=0.0,
                        api_key=ctx.key("shop"), ok_statuses=(201, 409), collect_ids=True)
        label = f"flash sale: {UNITS} units, {BUYERS} buyers, c={CONCURRENCY}"
        result = ctx.load(spec, label)
        out = asyncio.run(_outcome(ctx.stack.dsn, sku))
        checked = check_orders(ctx.stack.dsn, result.acknowledged)
        checked["units_sold_beyond_stock"] = max(0, out["ordered"] - UNITS)
        oversold = max(0, out["ordered"] - UNITS) + max(0, out["reserved"] - out["on_hand"])
        # The first reservation's transaction start to the last one's: the rate at which units went.
        rate = (UNITS - 1) / out["sell_out_s"] if out["sell_out_s"] > 0 else 0.0
        limit = ctx.limit("pgbench hot UPDATE c=")
        record = Record(scenario=label, throughput=rate, unit="reservations/s",
                        limit_name=limit.name if limit else None, limit_value=limit.value if limit else None)
        record.extra.update({
            "sell_out_s": round(out["sell_out_s"], 3), "sold": out["ordered"], "reserved": out["reserved"],
            "oversold": oversold, "sold_out": out["ordered"] == UNITS, "requests": result.requests,
            "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
            "http_p50_ms": result.percentile_ms(0.5), "http_p99_ms": result.percentile_ms(0.99),
            "cpu_cores": result.cpu, "aim": f"ratio >= {AIM_RATIO}, oversold 0", "correctness": checked,
        })
        record.extra["aim_met"] = bool(oversold == 0 and record.ratio is not None and record.ratio >= AIM_RATIO)
        return [record]
