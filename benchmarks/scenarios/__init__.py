"""Every scenario, in the order they run. A later issue adds its scenario by adding a module and a line."""

from __future__ import annotations

from benchmarks.scenarios.base import Context, Record, Scenario
from benchmarks.scenarios.console_store import ConsoleStoreScenario
from benchmarks.scenarios.ecommerce_latency import EcommerceLatencyScenario
from benchmarks.scenarios.ecommerce_sse_idle import EcommerceIdleStreamsScenario
from benchmarks.scenarios.finance_reconcile import FinanceReconcileScenario
from benchmarks.scenarios.inventory_movements import MovementsScenario
from benchmarks.scenarios.inventory_nearby import NearbyScenario
from benchmarks.scenarios.ledger_fabric import LedgerFabricScenario
from benchmarks.scenarios.ledger_log import LedgerScenario
from benchmarks.scenarios.orders_flash_sale import OrdersFlashSaleScenario
from benchmarks.scenarios.orders_mixed import OrdersMixedScenario

# Reads before writes: the nearby search then sees the freshly vacuumed tables the seed left.
SCENARIOS: list[Scenario] = [
    NearbyScenario(),
    MovementsScenario(),
    OrdersMixedScenario(),
    OrdersFlashSaleScenario(),
    EcommerceLatencyScenario(),
    EcommerceIdleStreamsScenario(),
    LedgerScenario(),
    LedgerFabricScenario(),
    FinanceReconcileScenario(),
    ConsoleStoreScenario(),
]

__all__ = ["SCENARIOS", "Context", "Record", "Scenario"]
