"""`make soak`'s verdict on memory: levelled off or still growing."""

from __future__ import annotations

from pathlib import Path

from benchmarks.drills.soak import levelling, plot_rss


def series(name: str, mib_at: list[float], every_s: float = 5.0) -> list[dict[str, object]]:
    return [{"t_s": i * every_s, "service": name, "rss_mib": mib} for i, mib in enumerate(mib_at)]


def test_growth_that_stops_has_levelled_off_and_steady_growth_has_not() -> None:
    warm_then_flat = [100 + min(i, 30) * 2 + (i % 3) * 0.2 for i in range(120)]  # grows 2 MiB/5 s, then flat
    leaking = [100 + i * 0.5 for i in range(120)]  # 6 MiB/min all along
    verdicts = levelling(series("orders", warm_then_flat) + series("ecommerce", leaking), warmup_s=0)
    assert verdicts["orders"]["levelled_off"] is True
    assert verdicts["ecommerce"]["levelled_off"] is False
    assert verdicts["ecommerce"]["last_third_mib_per_min"] == 6.0


def test_rss_is_plotted_per_service(tmp_path: Path) -> None:
    samples = series("orders", [100, 110, 112, 112]) + series("inventory", [80, 81, 81, 81])
    path = plot_rss([{k: str(v) for k, v in s.items()} for s in samples], tmp_path / "soak.png", 600)
    assert path.read_bytes()[:4] == b"\x89PNG"
