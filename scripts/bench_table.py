#!/usr/bin/env python3
"""Turns scripts/bench.sh's results.tsv and seed.tsv into the markdown tables of
docs/benchmarks.md, with every throughput divided by the ceiling measured in the same run
(same client tool, same connection count, same kind of request)."""

import csv
import sys

# Which ceiling row a scenario is divided by: purchases and sold-out rejections are POSTs of
# the same body, status reads are GETs.
CEILING_OF = {"purchase": "purchase", "sold_out": "purchase", "status": "status"}
# Issue 15's targets, as a share of the ceiling (issue 5's were 0.5 / 0.3 / 0.8). A
# deployment named `<store>-before` (BENCH_BASELINE_TABLE) is held to its store's target.
TARGET = {
    ("embedded", "purchase"): 0.55,
    ("redis-1", "purchase"): 0.35,
}
# Issue 15: every route's p99 at 1,000 connections at most this many times the ceiling's.
P99_TARGET = 1.5


def target_of(store, scenario):
    if store == "ceiling":
        return None
    store = store.removesuffix("-before")
    if scenario == "purchase" and store not in ("embedded", "redis-1"):
        return None
    return TARGET.get((store, scenario), 0.85)


def main(results_path, seed_path):
    rows = list(csv.reader(open(results_path), delimiter="\t"))
    ceiling = {}
    ceiling_p99 = {}
    for r in rows:
        if r[0] == "ceiling":
            ceiling[(r[1], r[2], r[3])] = float(r[4] or 0)
            ceiling_p99[(r[1], r[2], r[3])] = float(r[6] or 0)

    print("| target | scenario | tool | conns | req/s | p50 ms | p99 ms | errors | ratio to ceiling (target) | p99 / ceiling's | outcomes |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        store, scen, tool, conns, rps, p50, p99, errors = r[:8]
        note = r[8] if len(r) > 8 else ""
        rps = float(rps or 0)
        base = ceiling.get((CEILING_OF.get(scen, scen), tool, conns))
        tgt = target_of(store, scen)
        if store == "ceiling":
            ratio = "1.00 (ceiling)"
        elif base:
            r_ = rps / base
            if tgt is None:
                ratio = f"{r_:.2f}"
            else:
                ratio = f"{r_:.2f} (>= {tgt:.2f}) {'ok' if r_ >= tgt else 'MISS'}"
        else:
            ratio = "n/a"
        base_p99 = ceiling_p99.get((CEILING_OF.get(scen, scen), tool, conns))
        if store != "ceiling" and base_p99 and float(p99 or 0) > 0:
            q = float(p99) / base_p99
            mark = (" ok" if q <= P99_TARGET else " MISS") if conns == "1000" else ""
            p99_ratio = f"{q:.2f}{mark}"
        else:
            p99_ratio = ""
        print(f"| {store} | {scen} | {tool} | {conns} | {rps:,.0f} | {float(p50 or 0):.2f} | "
              f"{float(p99 or 0):.2f} | {errors} | {ratio} | {p99_ratio} | {note} |")

    seeds = [r for r in csv.reader(open(seed_path), delimiter="\t") if r]
    if seeds:
        print()
        print("Seed scenario: 1,000 buyers released at the start instant against 100 units "
              "(flashsale-load herd).")
        print()
        print("| target | time to sell out s | p50 ms | p99 ms | max ms | invariants "
              "| p99 / ceiling's (target) |")
        print("|---|---:|---:|---:|---:|---|---|")
        ceiling_p99 = next((float(r[3]) for r in seeds
                            if r[0] == "ceiling" and len(r) > 3 and r[3] not in ("", "null")),
                           None)
        for r in seeds:
            r += [""] * (6 - len(r))
            ratio = ""
            if ceiling_p99 and r[0] != "ceiling" and r[3] not in ("", "null"):
                q = float(r[3]) / ceiling_p99
                ratio = f"{q:.2f} (<= {P99_TARGET}) {'ok' if q <= P99_TARGET else 'MISS'}"
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
