"""What a full `make bench` leaves behind besides the JSON: the plot and the README's table."""

from __future__ import annotations

from pathlib import Path

from benchmarks import report
from benchmarks.scenarios.base import Record

RUN = {"started_at": "20261125T000000Z", "git_commit": "0123456789abcdef", "quick": False, "duration_s": 1.0,
       "machine": {"cores_logical": 2, "memory_gib": 23.5, "platform": "test"}, "setup": {}}


def points(*rows: tuple[int, float, float, float]) -> list[dict[str, object]]:
    return [{"series": "order placement", "label": f"c={c}", "concurrency": c, "throughput": t, "p50_ms": p50,
             "p99_ms": p99, "unit": "orders/s", "aim": {"throughput": 1500, "p99_ms": 50}} for c, t, p50, p99 in rows]


def test_latency_against_load_is_drawn_as_a_png(tmp_path: Path) -> None:
    written = report.render_plots(points((2, 300, 5, 9), (8, 800, 9, 20), (32, 1100, 28, 66)), tmp_path)
    assert [p.name for p in written] == ["order-placement.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.render_plots(points((16, 900, 10, 20)), tmp_path / "one") == []  # one point is no curve


def test_the_readme_table_is_replaced_between_its_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\n{report.README_START}\nold table\n{report.README_END}\n\nafter\n")
    record = Record("order placement c=16", 982.5, "orders/s", 16.4, 30.8,
                    extra={"correctness": {"acknowledged_orders": 1200, "lost_orders": 0, "levels_off_movements": 0,
                                           "reserved_off_open_orders": 0, "oversold_levels": 0}})
    for _ in range(2):  # a second run replaces the first run's block
        report.update_readme(RUN, [record], [tmp_path / "results" / "order-placement.png"], readme)
    text = readme.read_text()
    assert "old table" not in text and text.count(report.README_START) == 1 and text.endswith("\n\nafter\n")
    assert ("| order placement c=16 | 982.5 orders/s | 16.40 | 30.80 | — | — "
            "| lost 0/1,200, oversold 0, drift 0 |") in text
    assert "![order-placement](results/order-placement.png)" in text
    assert "run 20261125T000000Z (commit `0123456789ab`)" in text
