"""What a run leaves behind: the table on the terminal, results/<UTC timestamp>.json and RESULTS.md."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.limits import Limit
from benchmarks.scenarios.base import Record

HERE = Path(__file__).parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
README = HERE.parent / "README.md"
# The README's Performance table lives between these lines and is rewritten by every full run.
README_START, README_END = "<!-- make bench: start -->", "<!-- make bench: end -->"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def rows(records: list[Record]) -> list[list[str]]:
    return [[r.scenario, f"{_num(r.throughput)} {r.unit}", _num(r.p50_ms, 2), _num(r.p99_ms, 2),
             f"{r.limit_name}: {_num(r.limit_value)}" if r.limit_name else "—",
             "—" if r.ratio is None else f"{r.ratio:.1%}", _checked(r)] for r in records]


HEADERS = ["scenario", "throughput", "p50 ms", "p99 ms", "limit (same run)", "ratio", "database check"]


def _checked(record: Record) -> str:
    """Acknowledged orders lost (of all acknowledged), oversold levels or units, levels off their movements
    or reservations (correctness.py), for the scenarios that check them."""
    found = record.extra.get("correctness")
    if not found:
        return "—"
    oversold = found["oversold_levels"] + found.get("units_sold_beyond_stock", 0)
    drift = found["levels_off_movements"] + found["reserved_off_open_orders"]
    return f"lost {found['lost_orders']}/{found['acknowledged_orders']:,}, oversold {oversold}, drift {drift}"


def print_table(console: Console, records: list[Record], limits: list[Limit], run: dict[str, Any]) -> None:
    table = Table(title=f"omnistock benchmarks ({'quick' if run['quick'] else 'full'})")
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("scenario", "limit (same run)",
                                                               "database check") else "right")
    for row in rows(records):
        table.add_row(*row)
    console.print(table)
    limits_table = Table(title="limits measured in this run")
    for header in ("limit", "value", "detail"):
        limits_table.add_column(header)
    for limit in limits:
        limits_table.add_row(limit.name, f"{limit.value:,.0f} {limit.unit}", _detail(limit.detail))
    console.print(limits_table)
    cpu = Table(title="CPU split during each load (cores used of " f"{run['machine']['cores_logical']})")
    roles = sorted({role for r in records for role in r.extra.get("cpu_cores", {})})
    for header in ("scenario", *roles):
        cpu.add_column(header, justify="left" if header == "scenario" else "right")
    cpu.add_column("CPU ms per op (stack + client)", justify="left")
    for r in records:
        if "cpu_cores" in r.extra:
            cpu.add_row(r.scenario, *(f"{r.extra['cpu_cores'].get(role, 0):.2f}" for role in roles),
                        _per_op(r.extra.get("cpu_ms_per_op", {})))
    console.print(cpu)
    if noisy := contended(records):
        console.print(f"[yellow]warning:[/yellow] other processes used the cores during {', '.join(noisy)}; "
                      "these figures understate what the stack can do on a quiet machine")
    console.print("setup: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in run["setup"].items()))


CONTENDED_CORES = 0.25  # other processes' share of the cores above which a figure is not the stack's own


def contended(records: list[Record]) -> list[str]:
    return [r.scenario for r in records if r.extra.get("cpu_cores", {}).get("other", 0.0) > CONTENDED_CORES]


def _per_op(per_op: dict[str, float]) -> str:
    return ", ".join(f"{role} {ms:.2f}" for role, ms in per_op.items())


def _detail(detail: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in detail.items())


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def payload(records: list[Record], limits: list[Limit], run: dict[str, Any],
            load_points: list[dict[str, Any]], profiles: dict[str, Any]) -> dict[str, Any]:
    return {
        **run,
        "scenarios": [{**asdict(r), "ratio": r.ratio} for r in records],
        "limits": [asdict(limit) for limit in limits],
        "load_points": load_points,
        **({"profiles": profiles} if profiles else {}),
    }


def print_profiles(console: Console, profiles: dict[str, Any]) -> None:
    """Where each service spent its samples during each load (py-spy, --profile)."""
    for label, services in profiles.items():
        for service, summary in services.items():
            if service == "postgres":
                _print_statements(console, label, summary.get("statements", []))
                continue
            table = Table(title=f"{service} during {label}: share of samples")
            table.add_column("self (leaf function)")
            table.add_column("share", justify="right")
            table.add_column("inclusive (below entry points)")
            table.add_column("share", justify="right")
            own, inclusive = summary.get("self", []), summary.get("inclusive", [])
            for i in range(max(len(own), len(inclusive))):
                a = own[i] if i < len(own) else ("", None)
                b = inclusive[i] if i < len(inclusive) else ("", None)
                table.add_row(a[0], _pct(a[1]), b[0], _pct(b[1]))
            console.print(table)


def _print_statements(console: Console, label: str, statements: list[dict[str, Any]]) -> None:
    table = Table(title=f"postgres during {label}: statements by execution time (pg_stat_statements)")
    for name, justify in (("share", "right"), ("ms/call", "right"), ("max ms", "right"), ("calls", "right"),
                          ("rows/call", "right"), ("statement", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in statements:
        table.add_row(_pct(s["share"]), f"{s['ms_per_call']:.3f}", f"{s['max_ms']:.1f}", f"{s['calls']:,}",
                      f"{s['rows_per_call']:g}", s["query"])
    console.print(table)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def write_json(data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    suffix = "-quick" if data["quick"] else ""
    path = RESULTS_DIR / f"{data['started_at']}{suffix}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def render_plots(load_points: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per series of `load_points`: p50 and p99 latency against the throughput each client count
    reached (a closed loop: more clients, more load, until the stack saturates and only latency grows)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server or in CI
    import matplotlib.pyplot as plt

    series: dict[str, list[dict[str, Any]]] = {}
    for point in load_points:
        series.setdefault(point["series"], []).append(point)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, points in series.items():
        points = sorted(points, key=lambda p: p["concurrency"])
        if len(points) < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        x = [p["throughput"] for p in points]
        for key, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
            ax.plot(x, [p[key] for p in points], style, label=key.removesuffix("_ms"))
        for p in points:
            ax.annotate(f"c={p['concurrency']}", (p["throughput"], p["p99_ms"]), textcoords="offset points",
                        xytext=(4, 6), fontsize=8)
        aim = next((p.get("aim") for p in points if p.get("aim")), None)
        if aim:
            ax.axhline(aim["p99_ms"], color="grey", linewidth=0.8, linestyle=":")
            ax.axvline(aim["throughput"], color="grey", linewidth=0.8, linestyle=":")
            ax.annotate("aim", (aim["throughput"], aim["p99_ms"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color="grey")
        ax.set_xlabel(f"throughput ({points[0].get('unit', 'ops/s')})")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{name}: latency against load")
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, max(*x, aim["throughput"] if aim else 0) * 1.15)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{name.replace(' ', '-').replace('/', '-')}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def write_markdown(data: dict[str, Any], records: list[Record], limits: list[Limit], json_path: Path,
                   plots: list[Path]) -> Path:
    machine = data["machine"]
    lines = [
        "# Benchmark results",
        "",
        "Regenerated by `make bench` (`.venv/bin/python -m benchmarks`) on every full run; do not edit by hand.",
        "",
        f"- run: {data['started_at']} UTC, commit `{data['git_commit']}`, {data['duration_s']:.0f} s in all",
        f"- machine: {machine['cores_logical']} cores, {machine['memory_gib']} GiB, {machine['platform']}",
        f"- figures: [`{json_path.relative_to(HERE)}`]({json_path.relative_to(HERE)})",
        "- setup: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in data["setup"].items()),
        *([f"- contended: other processes used more than {CONTENDED_CORES} cores during "
           f"{', '.join(contended(records))} (see `other` below); those figures understate the stack"]
          if contended(records) else []),
        "",
        *table_lines(records),
        "",
        "## Limits measured in the same run",
        "",
        "| limit | value | detail |",
        "|---|---|---|",
        *(f"| {limit.name} | {limit.value:,.0f} {limit.unit} | {_detail(limit.detail)} |" for limit in limits),
        "",
        "## CPU split during each load (cores used)",
        "",
        *_cpu_lines(records),
        *(f"![{plot.stem}]({plot.relative_to(HERE)})" for plot in plots),
    ]
    RESULTS_MD.write_text("\n".join(lines).rstrip() + "\n")
    return RESULTS_MD


def _cpu_lines(records: list[Record]) -> list[str]:
    roles = sorted({role for r in records for role in r.extra.get("cpu_cores", {})})
    if not roles:
        return []
    out = ["| scenario | " + " | ".join(roles) + " | CPU ms per op |", "|---|" + "---|" * (len(roles) + 1)]
    for r in records:
        if "cpu_cores" in r.extra:
            cores = " | ".join(f"{r.extra['cpu_cores'].get(x, 0):.2f}" for x in roles)
            out.append(f"| {r.scenario} | {cores} | {_per_op(r.extra.get('cpu_ms_per_op', {}))} |")
    return [*out, ""]


def table_lines(records: list[Record]) -> list[str]:
    return ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|",
            *("| " + " | ".join(row) + " |" for row in rows(records))]


def update_readme(data: dict[str, Any], records: list[Record], plots: list[Path], readme: Path = README) -> Path:
    """Put this run's table (and plots) between the README's markers, with the command that made it."""
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    machine = data["machine"]
    block = [
        "",
        f"`make bench`, run {data['started_at']} (commit `{data['git_commit'][:12]}`) on "
        f"{machine['cores_logical']} cores and {machine['memory_gib']} GiB, every service a separate process, the "
        "load from separate client processes, limits measured in the same run; the full report with the CPU "
        "split per process is [benchmarks/RESULTS.md](benchmarks/RESULTS.md).",
        "",
        *table_lines(records),
        "",
        *(f"![{plot.stem}]({plot.relative_to(readme.parent)})" for plot in plots),
        "",
    ]
    readme.write_text(text[:start] + "\n".join(block) + text[end:])
    return readme
