"""Markdown tables from bench/results/fleet.json, for docs/performance.md:

.venv/bin/python bench/fleet_report.py [bench/results/fleet.json]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _f(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _runs(runs: list[dict[str, Any]], *path: str) -> str:
    """Each run's value, for the reader to see the spread behind a median."""
    values = []
    for run in runs:
        v: Any = run
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        values.append(_f(v))
    return ", ".join(values)


def provisioning(results: dict[str, Any]) -> list[str]:
    lines = [
        "| N | runs | Vauban all Ready | p50 | p95 | raw SQL | raw API | provider-sql all Ready"
        " | p50 | p95 | Vauban / raw SQL | Vauban / raw API | Vauban / provider-sql |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, row in sorted(results["summary"]["provisioning"].items(), key=lambda x: int(x[0])):
        runs = results["provisioning"][n]
        r = row["ratios"]
        lines.append(
            f"| {n} | {len(runs.get('vauban', []))} "
            f"| {_f(row['vauban_time_to_all_ready_s'], 1, ' s')} "
            f"| {_f(row['vauban_p50_s'], 1, ' s')} | {_f(row['vauban_p95_s'], 1, ' s')} "
            f"| {_f(row['raw_sql_s'], 1, ' s')} | {_f(row['raw_api_s'], 1, ' s')} "
            f"| {_f(row['peer_time_to_all_ready_s'], 1, ' s')} "
            f"| {_f(row['peer_p50_s'], 1, ' s')} | {_f(row['peer_p95_s'], 1, ' s')} "
            f"| {_f(r.get('vauban_over_raw_sql'), 2)} | {_f(r.get('vauban_over_raw_api'), 2)} "
            f"| {_f(r.get('vauban_over_peer_time'), 2)} |"
        )
    lines += ["", "Each run's time to all Ready (s), Vauban; provider-sql:", ""]
    for n, runs in sorted(results["provisioning"].items(), key=lambda x: int(x[0])):
        lines.append(
            f"- N = {n}: {_runs(runs.get('vauban', []), 'time_to_all_ready_seconds')}; "
            f"{_runs(runs.get('peer', []), 'time_to_all_ready_seconds')}"
        )
    return lines


def cost(results: dict[str, Any]) -> list[str]:
    lines = [
        "| N | who | API requests / object | writes / object | GET | POST | PATCH | PUT"
        " | SQL statements / object | connections / object | CPU s | peak RSS | machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, runs in sorted(results["provisioning"].items(), key=lambda x: int(x[0])):
        for who in ("vauban", "peer"):
            if not runs.get(who):
                continue

            def med(*path: str, _runs: list[dict[str, Any]] = runs[who]) -> float | None:
                values = []
                for run in _runs:
                    v: Any = run
                    for key in path:
                        v = v.get(key) if isinstance(v, dict) else None
                    if isinstance(v, (int, float)):
                        values.append(float(v))
                return statistics.median(values) if values else None

            methods = ("GET", "POST", "PATCH", "PUT")
            by = [med("api", "by_http_method_per_object", m) for m in methods]
            lines.append(
                f"| {n} | {'Vauban' if who == 'vauban' else 'provider-sql'} "
                f"| {_f(med('api', 'per_object'), 1)} | {_f(med('api', 'writes_per_object'), 2)} "
                + " ".join(f"| {_f(b, 1)}" for b in by)
                + f" | {_f(med('sql', 'statements_per_object'), 1)} "
                f"| {_f(med('sql', 'connections_per_object'), 1)} "
                f"| {_f(med('process', 'cpu_seconds'), 1)} "
                f"| {_f(med('process', 'rss_peak_mib'), 0, ' MiB')} "
                f"| {_f(med('process', 'machine_busy_percent'), 0, ' %')} |"
            )
    return lines


def steady_by_n(results: dict[str, Any]) -> list[str]:
    """The steady state at every N that had one in this run, side by side: flat in N or not."""
    rows = (results.get("summary") or {}).get("steady_by_n") or {}
    lines = [
        "| N | servers | clusters | window | CPU % of a core | machine busy | RSS median"
        " | RSS growth / 1000 objects | API requests / min | API writes / min"
        " | SQL statements / min | SQL connections / min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in sorted(((k, v) for k, v in rows.items() if k.isdigit()), key=lambda x: int(x[0])):
        if r.get("skipped"):
            lines.append(f"| {n} | not measured: {r['skipped']} |" + " |" * 10)
            continue
        lines.append(
            f"| {n} | {_f(r['servers'])} | {_f(r['clusters'])} | {_f(r['seconds'], 0, ' s')} "
            f"| {_f(r['cpu_percent_of_one_core'], 2, ' %')} "
            f"| {_f(r['machine_busy_percent'], 0, ' %')} "
            f"| {_f(r['rss_median_mib'], 0, ' MiB')} "
            f"| {_f(r['rss_growth_mib_per_1000_objects'], 2, ' MiB')} "
            f"| {_f(r['api_requests_per_minute'], 1)} | {_f(r['api_writes_per_minute'], 1)} "
            f"| {_f(r['sql_statements_per_minute'], 1)} "
            f"| {_f(r['sql_connections_per_minute'], 1)} |"
        )
    between = rows.get("rss_growth_between")
    if between:
        lines += [
            "",
            f"RSS growth from N = {between['from_n']} to N = {between['to_n']} (steady medians"
            f" of the two runs): {_f(between['mib_per_1000_objects'], 2, ' MiB')} per 1000"
            " objects.",
        ]
    return lines


def rss_curve(results: dict[str, Any]) -> list[str]:
    """The operator's RSS against the Ready objects during each Vauban burst: the RSS when
    a quarter, half, three quarters and all of them were Ready."""
    lines = [
        "| N | run | RSS before | 25 % Ready | 50 % | 75 % | 100 % | end | slope / 1000 Ready |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, runs in sorted(results["provisioning"].items(), key=lambda x: int(x[0])):
        for k, run in enumerate(runs.get("vauban", [])):
            curve = run.get("rss_over_ready")
            if not curve or not curve["points"]:
                continue
            points = curve["points"]

            def at(share: float, points: list[list[float]] = points, n: int = int(n)) -> str:
                for _, ready, mib in points:
                    if ready >= share * n:
                        return _f(mib, 0, " MiB")
                return "—"

            lines.append(
                f"| {n} | {k} | {_f(curve['rss_before_mib'], 0, ' MiB')} "
                + " ".join(f"| {at(q)}" for q in (0.25, 0.5, 0.75, 1.0))
                + f" | {_f(points[-1][2], 0, ' MiB')} "
                f"| {_f(curve['burst_slope_mib_per_1000_ready'], 2, ' MiB')} |"
            )
    return lines


def managed(results: dict[str, Any]) -> list[str]:
    lines = [
        "| N | all Ready | p50 | p95 | API requests / object | writes / object | CPU s"
        " | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, row in sorted(results["summary"]["managed"].items(), key=lambda x: int(x[0])):
        lines.append(
            f"| {n} | {_f(row['time_to_all_ready_s'], 1, ' s')} | {_f(row['p50_s'], 1, ' s')} "
            f"| {_f(row['p95_s'], 1, ' s')} | {_f(row['api_requests_per_object'], 1)} "
            f"| {_f(row['api_writes_per_object'], 1)} | {_f(row['cpu_seconds'], 1)} "
            f"| {_f(row['rss_peak_mib'], 0, ' MiB')} |"
        )
    return lines


def targets(results: dict[str, Any]) -> list[str]:
    lines = ["| target | measured | met |", "|---|---|---|"]
    t = results.get("targets", {})
    if "time_to_all_ready_no_worse_than_peer" in t:
        x = t["time_to_all_ready_no_worse_than_peer"]
        lines.append(
            f"| N = {x['n']}: time to all Ready no worse than provider-sql "
            f"| {_f(x['vauban_s'], 1, ' s')} vs {_f(x['peer_s'], 1, ' s')} "
            f"(ratio {_f(x['ratio'], 2)}) | {_f(x['met'])} |"
        )
    if "at_most_4_api_writes_per_database" in t:
        x = t["at_most_4_api_writes_per_database"]
        lines.append(
            f"| N = {x['n']}: at most 4 API writes per ManagedDatabase "
            f"| {_f(x['writes_per_object'], 2)} | {_f(x['met'])} |"
        )
    if "steady_rss_under_200_mib" in t:
        x = t["steady_rss_under_200_mib"]
        lines.append(
            f"| steady state, {x['objects']} objects: RSS under 200 MiB "
            f"| peak {_f(x['rss_peak_mib'], 0, ' MiB')}, "
            f"median {_f(x['rss_median_mib'], 0, ' MiB')}"
            f" | {_f(x['met'])} |"
        )
    if "idle_cpu_under_2_percent" in t:
        x = t["idle_cpu_under_2_percent"]
        lines.append(
            f"| steady state, {x['objects']} objects: CPU under 2 % of a core "
            f"| {_f(x['cpu_percent_of_one_core'], 2, ' %')} | {_f(x['met'])} |"
        )
    if "rss_growth_at_most_5_mib_per_1000_objects" in t:
        x = t["rss_growth_at_most_5_mib_per_1000_objects"]
        lines.append(
            f"| steady state, {x['objects']} objects: RSS growth at most 5 MiB per 1000 objects "
            f"| {_f(x['mib_per_1000_objects'], 2, ' MiB')} ({x.get('basis', '')}) "
            f"| {_f(x['met'])} |"
        )
    if "steady_state" in t:
        x = t["steady_state"]
        lines.append(f"| steady state, {x['objects']} objects | not measured: {x['why']} | — |")
    return lines


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/fleet.json")
    results = json.loads(source.read_text())
    for title, part in (
        ("Provisioning burst: time to Ready (medians)", provisioning),
        ("Provisioning burst: cost per object (medians)", cost),
        ("Operator RSS against Ready objects, during the burst", rss_curve),
        ("Steady state by N (same run)", steady_by_n),
        ("Managed clusters burst (medians)", managed),
        ("Targets", targets),
    ):
        lines = part(results)
        if len(lines) <= 2:
            continue  # nothing measured (an older run, or a phase not asked for)
        print(f"### {title}\n")
        print("\n".join(lines))
        print()
    for key in ("steady", "churn"):
        if results.get(key):
            print(f"### {key}\n\n```json\n{json.dumps(results[key], indent=1)[:4000]}\n```\n")


if __name__ == "__main__":
    main()
