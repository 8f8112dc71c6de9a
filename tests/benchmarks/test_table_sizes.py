"""`make soak`'s verdict on table sizes: transient tables level off under housekeeping, or they do not."""

from __future__ import annotations

from pathlib import Path

from benchmarks.drills.table_sizes import levelling, plot_tables


def series(table: str, mib_at: list[float], every_s: float = 5.0) -> list[dict[str, object]]:
    return [{"t_s": i * every_s, "table": table, "mib": mib, "rows": None} for i, mib in enumerate(mib_at)]


def test_a_pruned_table_levels_off_and_one_kept_forever_does_not() -> None:
    pruned = [min(i, 15) * 4 + (i % 2) * 0.1 for i in range(60)]  # grows until the window passes, then flat
    forever = [i * 2.0 for i in range(60)]  # 24 MiB/min all along
    verdicts = levelling(series("core.events", pruned) + series("core.idempotency_keys", forever)
                         + series("orders.orders", forever), warmup_s=0)
    assert verdicts["core.events"]["levelled_off"] is True
    assert verdicts["core.idempotency_keys"]["levelled_off"] is False
    assert verdicts["core.idempotency_keys"]["last_third_mib_per_min"] == 24.0
    assert "levelled_off" not in verdicts["orders.orders"]  # durable: expected to grow, not judged
    assert (verdicts["core.events"]["start_mib"], verdicts["core.events"]["end_mib"]) == (0, 60.1)


def test_table_sizes_are_plotted(tmp_path: Path) -> None:
    path = plot_tables(series("core.events", [1, 2, 2]) + series("orders.orders", [1, 2, 3]),
                       tmp_path / "tables.png", 300, 60)
    assert path.read_bytes()[:4] == b"\x89PNG"
