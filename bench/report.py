#!/usr/bin/env python3
"""Turns bench/run's measurements into its one table, and compares the
alerts of trailspike and the Kafka Streams peer (and, with --scaled, of
trailspike scaled out and single-instance trailspike).

    report.py table RESULTS --messages N --bytes B --peer-idle-ms MS
              --trailspike-alerts FILE --peer-alerts FILE
              [--scaled-alerts FILE]
    report.py compare TRAILSPIKE_ALERTS PEER_ALERTS

RESULTS has one line per contender: name wall_s user_s sys_s max_rss_kb
broker_cpu_s (written by `measure` in bench/lib.sh).
"""

import argparse
import json
import math
import sys

NAMES = {
    "kcat": "kcat (ceiling)",
    "trailspike": "trailspike",
    "peer": "Kafka Streams peer",
    "trailspike-scaled": "trailspike (scaled out, 1 instance)",
}


def read_results(path, peer_idle_ms):
    rows = {}
    with open(path) as f:
        for line in f:
            name, wall, user, sys_, rss, broker = line.split()
            wall = float(wall)
            # The peer waits this long without input before it stops itself:
            # waiting, not work, so it leaves the wall time.
            if name == "peer":
                wall -= peer_idle_ms / 1000.0
            rows[name] = {
                "wall": wall,
                "cpu": float(user) + float(sys_),
                "rss_mb": int(rss) / 1024.0,
                "broker_cpu": float(broker),
            }
    return rows


def read_alerts(path):
    """Alerts keyed by (user, windowStart, numberOfApiCalls)."""
    alerts = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            a = json.loads(line)
            alerts[(a["user"], a["windowStart"], a["numberOfApiCalls"])] = a
    return alerts


def compare(ts_path, peer_path):
    ts, peer = read_alerts(ts_path), read_alerts(peer_path)
    both = ts.keys() & peer.keys()
    # Same (user, window, count) should give the same baseline, because
    # both apply the same arithmetic in the same order.
    differing = [
        k
        for k in both
        if ts[k]["numDataPoints"] != peer[k]["numDataPoints"]
        or not math.isclose(ts[k]["avgApiCalls"], peer[k]["avgApiCalls"], rel_tol=1e-9)
        or not math.isclose(ts[k]["stdevApiCalls"], peer[k]["stdevApiCalls"], rel_tol=1e-9, abs_tol=1e-12)
    ]
    return {
        "trailspike": len(ts),
        "peer": len(peer),
        "match": len(both),
        "only_trailspike": sorted(ts.keys() - peer.keys()),
        "only_peer": sorted(peer.keys() - ts.keys()),
        "baseline_differs": sorted(differing),
    }


def agrees(c):
    return not c["only_trailspike"] and not c["only_peer"] and not c["baseline_differs"]


def print_comparison(c, out, first="trailspike", second="peer"):
    """Prints compare()'s answer, its two sides named `first` and
    `second`."""
    print(
        f"alerts: {first} {c['trailspike']}, {second} {c['peer']}, matching "
        f"(user, windowStart, numberOfApiCalls) {c['match']}, only in {first} "
        f"{len(c['only_trailspike'])}, only in {second} {len(c['only_peer'])}, matching "
        f"with a different baseline {len(c['baseline_differs'])}",
        file=out,
    )
    for label, keys in (
        (f"only in {first}", c["only_trailspike"]),
        (f"only in {second}", c["only_peer"]),
        ("baseline differs", c["baseline_differs"]),
    ):
        for user, start, count in keys[:10]:
            print(f"  {label}: {start} {count} {user}", file=out)
        if len(keys) > 10:
            print(f"  {label}: ... {len(keys) - 10} more", file=out)


def print_scaled_ratios(rows):
    """trailspike scaled out against single-instance trailspike and the
    peer: how many times their events per CPU second and per wall second
    the scaled instance does (above 1: it does more)."""
    scaled = rows["trailspike-scaled"]
    for name in ("trailspike", "peer"):
        r = rows[name]
        print(
            f"{NAMES['trailspike-scaled']} vs {NAMES[name]}, events per CPU second: "
            f"{r['cpu'] / scaled['cpu']:.2f}x (process only), "
            f"{(r['cpu'] + r['broker_cpu']) / (scaled['cpu'] + scaled['broker_cpu']):.2f}x "
            f"(process + broker); per wall second: {r['wall'] / scaled['wall']:.2f}x"
        )


def table(args):
    rows = read_results(args.results, args.peer_idle_ms)
    c = compare(args.trailspike_alerts, args.peer_alerts)
    agree = agrees(c)
    contenders = ["kcat", "trailspike", "peer"]
    if args.scaled_alerts:
        if "trailspike-scaled" not in rows:
            sys.exit(f"report.py: {args.results} has no trailspike-scaled row")
        contenders.append("trailspike-scaled")
        # The scaled instance is checked against single-instance trailspike:
        # the same detection, so the same alerts.
        scaled_c = compare(args.trailspike_alerts, args.scaled_alerts)
    n, mb = args.messages, args.bytes / 1e6
    ceiling = n / rows["kcat"]["wall"]
    header = (
        "| contender | wall s | events/s | MB/s | vs ceiling | CPU s | CPU s / M events "
        "| + broker CPU s / M events | peak RSS MB | alerts agree |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in contenders:
        r = rows[name]
        rate = n / r["wall"]
        if name == "kcat":
            agreement = "-"
        elif name == "trailspike-scaled":
            agreement = "yes" if agrees(scaled_c) else "no"
        else:
            agreement = "yes" if agree else "no"
        print(
            f"| {NAMES[name]} | {r['wall']:.2f} | {rate:,.0f} | {mb / r['wall']:,.1f} "
            f"| {rate / ceiling:.2f} | {r['cpu']:.2f} | {r['cpu'] / n * 1e6:.2f} "
            f"| {(r['cpu'] + r['broker_cpu']) / n * 1e6:.2f} | {r['rss_mb']:,.0f} | {agreement} |"
        )
    ts, peer = rows["trailspike"], rows["peer"]
    print()
    print(
        f"trailspike vs peer, events per CPU second: {peer['cpu'] / ts['cpu']:.2f}x "
        f"(process only), {(peer['cpu'] + peer['broker_cpu']) / (ts['cpu'] + ts['broker_cpu']):.2f}x "
        f"(process + broker); per wall second: {peer['wall'] / ts['wall']:.2f}x"
    )
    print(
        f"goals: trailspike/ceiling {n / ts['wall'] / ceiling:.2f} (goal >= 0.8: "
        f"{'met' if n / ts['wall'] / ceiling >= 0.8 else 'NOT met'}); "
        f"trailspike/peer per CPU second {peer['cpu'] / ts['cpu']:.2f}x (goal >= 3x: "
        f"{'met' if peer['cpu'] / ts['cpu'] >= 3 else 'NOT met'})"
    )
    if args.scaled_alerts:
        print_scaled_ratios(rows)
    print(f"(peer wall time excludes its {args.peer_idle_ms} ms idle wait before stopping itself)")
    if args.scaled_alerts:
        print(
            "(trailspike scaled out: wall time from start to exit after the SIGTERM that "
            "bench/until_done sends once /metrics show every message consumed and the "
            "alerts committed; its alerts agree if they agree with single-instance "
            "trailspike's)"
        )
    print_comparison(c, sys.stdout)
    if args.scaled_alerts:
        print_comparison(scaled_c, sys.stdout, "trailspike", "trailspike scaled out")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table")
    t.add_argument("results")
    t.add_argument("--messages", type=int, required=True)
    t.add_argument("--bytes", type=int, required=True)
    t.add_argument("--peer-idle-ms", type=int, default=0)
    t.add_argument("--trailspike-alerts", required=True)
    t.add_argument("--peer-alerts", required=True)
    t.add_argument("--scaled-alerts", help="alerts of trailspike scaled out (bench/run --scaled)")
    c = sub.add_parser("compare")
    c.add_argument("trailspike_alerts")
    c.add_argument("peer_alerts")
    args = parser.parse_args()
    if args.command == "table":
        table(args)
    else:
        print_comparison(compare(args.trailspike_alerts, args.peer_alerts), sys.stdout)


if __name__ == "__main__":
    main()
