#!/usr/bin/env python3
"""Helpers of benches/compare.sh: process CPU and memory from /proc, parsing of iperf3 and
redis-benchmark output, the 10,000-idle-connections probe, and the summary table with ratios
to direct and the issue's targets. Standard library only, so the script needs no pip.

Subcommands (all print plain text on stdout):
  ticks PID...            CPU clock ticks (user+system, reaped children included) of the
                          process trees rooted at the PIDs
  rss PID...              resident memory in KiB summed over those process trees
  iperf FILE              receiver Gb/s and CPU % of iperf3 client + server from `iperf3 -J`
  redis FILE              "TEST rps p50_ms" lines from `redis-benchmark --csv` output
  idle ...                opens N idle connections through a proxy; prints RSS before/with
  summarize TSV           median table, ratios to direct, targets met or missed
"""

import argparse
import csv
import json
import os
import socket
import statistics
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read_stat(pid):
    """(ppid, utime+stime, cutime+cstime) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    ppid = int(fields[1])
    own = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14])
    return ppid, own, children


def trees(roots):
    """Every PID in the process trees rooted at `roots` (roots included)."""
    parent_of = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat:
                parent_of[int(name)] = stat[0]
    members = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent_of.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return members


def cmd_ticks(args):
    roots = [int(p) for p in args.pids]
    total = 0
    for pid in trees(roots):
        stat = read_stat(pid)
        if stat is None:
            continue
        total += stat[1]
        # Children that were reaped are in their parent's cumulative fields; count those of
        # the roots only, so a child counted alive is not counted again.
        if pid in roots:
            total += stat[2]
    print(total)


def rss_kib(roots):
    total = 0
    for pid in trees(roots):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cmd_rss(args):
    print(rss_kib([int(p) for p in args.pids]))


def cmd_iperf(args):
    with open(args.file) as f:
        data = json.load(f)
    if "error" in data:
        sys.exit(f"iperf3 failed: {data['error']}")
    cpu = data["end"].get("cpu_utilization_percent", {})
    endpoints = cpu.get("host_total", 0.0) + cpu.get("remote_total", 0.0)
    print(f"{data['end']['sum_received']['bits_per_second'] / 1e9:.3f} {endpoints:.1f}")


def cmd_redis(args):
    with open(args.file) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{args.file}: no redis-benchmark results")
    for row in rows:
        print(row["test"].split()[0], row["rps"], row["p50_latency_ms"])


def cmd_idle(args):
    """Holds `count` idle connections open through the proxy listening on `listen`, whose
    upstream is our own holder socket on `hold_port`; reports the proxy's RSS before and
    with them."""
    host, port = args.listen.rsplit(":", 1)
    roots = [int(p) for p in args.pids]
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", args.hold_port))
    holder.listen(4096)
    accepted = []
    deadline = time.monotonic() + args.timeout

    def accept_all():
        holder.settimeout(1.0)
        while len(accepted) < args.count and time.monotonic() < deadline:
            try:
                conn, _ = holder.accept()
                accepted.append(conn)
            except socket.timeout:
                pass

    base = rss_kib(roots)
    acceptor = threading.Thread(target=accept_all)
    acceptor.start()
    clients = []
    try:
        for _ in range(args.count):
            if time.monotonic() > deadline:
                break
            clients.append(socket.create_connection((host, int(port)), timeout=5))
        acceptor.join(max(0.0, deadline - time.monotonic()) + 1)
        reached = len(accepted)
        # The proxy's per-connection state is built right after its upstream connect
        # returns; sample a few times and keep the highest figure.
        loaded = 0
        for _ in range(5):
            time.sleep(0.2)
            loaded = max(loaded, rss_kib(roots))
    finally:
        for s in clients + accepted:
            s.close()
        holder.close()
    print(f"base_kib={base} loaded_kib={loaded} connections={reached}")
    if reached < args.count:
        sys.exit(f"only {reached} of {args.count} connections reached the holder in time")


# ---------------------------------------------------------------------------------------
# Summary

TARGETS_ORDER = ["direct", "dso-proxy", "haproxy", "nginx", "socat"]


def load(path):
    values = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            _round, test, target, metric, value = parts
            try:
                values.setdefault((test, target, metric), []).append(float(value))
            except ValueError:
                pass
    return values


def cmd_summarize(args):
    values = load(args.tsv)

    def med(test, target, metric):
        v = values.get((test, target, metric))
        return statistics.median(v) if v else None

    def count(test, target, metric):
        return len(values.get((test, target, metric), []))

    targets = [t for t in TARGETS_ORDER if any(k[1] == t for k in values)]

    def fmt(x, digits=2):
        return "–" if x is None else f"{x:,.{digits}f}"

    def ratio(x, base):
        if x is None or not base:
            return "–"
        return f"{x / base:.2f}×"

    def cpu_per_gbps(test, target):
        cpu, gbps = med(test, target, "cpu_pct"), med(test, target, "gbps")
        if cpu is None or not gbps:
            return None
        return cpu / gbps

    out = []
    rounds = max((len(v) for v in values.values()), default=0)
    out.append(f"Medians of {rounds} interleaved round(s); ratios are to direct in the same run.")
    out.append("")
    out.append("| path | 1 stream Gb/s | × direct | 4 streams Gb/s | × direct "
               "| CPU % (1 stream) | CPU % per Gb/s | CPU % (4 streams) | iperf3 CPU % (1 stream) |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    d1, d4 = med("iperf1", "direct", "gbps"), med("iperf4", "direct", "gbps")
    for t in targets:
        g1, g4 = med("iperf1", t, "gbps"), med("iperf4", t, "gbps")
        out.append(f"| {t} | {fmt(g1)} | {ratio(g1, d1)} | {fmt(g4)} | {ratio(g4, d4)} "
                   f"| {fmt(med('iperf1', t, 'cpu_pct'), 0)} | {fmt(cpu_per_gbps('iperf1', t), 1)} "
                   f"| {fmt(med('iperf4', t, 'cpu_pct'), 0)} "
                   f"| {fmt(med('iperf1', t, 'endpoints_cpu_pct'), 0)} |")
    out.append("")
    out.append("| path | c=1 GET rps | c=1 GET p50 µs | c=1 SET rps | c=1 SET p50 µs "
               "| c=50 GET rps | × direct | c=50 GET p50 µs | c=50 SET rps | c=50 SET p50 µs |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    dg50 = med("redis50", "direct", "GET_rps")
    for t in targets:
        def us(test, m):
            v = med(test, t, m)
            return None if v is None else v * 1000
        out.append(
            f"| {t} | {fmt(med('redis1', t, 'GET_rps'), 0)} | {fmt(us('redis1', 'GET_p50_ms'), 0)} "
            f"| {fmt(med('redis1', t, 'SET_rps'), 0)} | {fmt(us('redis1', 'SET_p50_ms'), 0)} "
            f"| {fmt(med('redis50', t, 'GET_rps'), 0)} | {ratio(med('redis50', t, 'GET_rps'), dg50)} "
            f"| {fmt(us('redis50', 'GET_p50_ms'), 0)} | {fmt(med('redis50', t, 'SET_rps'), 0)} "
            f"| {fmt(us('redis50', 'SET_p50_ms'), 0)} |")
    out.append("")
    out.append("| path | connections/s | × direct | RSS idle KiB | RSS after load KiB "
               "| RSS with idle conns KiB | bytes per idle conn |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    dc = med("cps", "direct", "cps")
    for t in targets:
        base, loaded = med("idle", t, "base_kib"), med("idle", t, "loaded_kib")
        n = med("idle", t, "connections")
        per = None if None in (base, loaded) or not n else (loaded - base) * 1024 / n
        out.append(f"| {t} | {fmt(med('cps', t, 'cps'), 0)} | {ratio(med('cps', t, 'cps'), dc)} "
                   f"| {fmt(med('rss', t, 'idle_kib'), 0)} | {fmt(med('rss', t, 'after_kib'), 0)} "
                   f"| {fmt(loaded, 0)} | {fmt(per, 0)} |")
    if values.get(("idle", "dso-proxy", "connections")):
        out.append(f"\nIdle connections held open: {int(med('idle', 'dso-proxy', 'connections'))}.")

    # The targets, each with the figures it compares.
    out.append("")
    out.append("| target | measured | verdict |")
    out.append("|---|---|---|")
    dso = "dso-proxy"

    def verdict(ok):
        return "–" if ok is None else ("met" if ok else "MISSED")

    g = med("iperf1", dso, "gbps")
    r = None if g is None or not d1 else g / d1
    out.append(f"| single-stream throughput ≥ 0.80× direct | {fmt(r)}× "
               f"({fmt(g)} of {fmt(d1)} Gb/s) | {verdict(None if r is None else r >= 0.80)} |")
    for op in ("GET", "SET"):
        a, b = med("redis1", dso, f"{op}_p50_ms"), med("redis1", "nginx", f"{op}_p50_ms")
        ok = None if None in (a, b) else a <= b
        out.append(f"| c=1 {op} p50 ≤ nginx stream | {fmt(None if a is None else a * 1000, 0)} µs "
                   f"vs {fmt(None if b is None else b * 1000, 0)} µs | {verdict(ok)} |")
    a, b = med("cps", dso, "cps"), med("cps", "haproxy", "cps")
    r = None if None in (a, b) or not b else a / b
    out.append(f"| connections/s ≥ 1.2× HAProxy | {fmt(r)}× ({fmt(a, 0)} vs {fmt(b, 0)}) "
               f"| {verdict(None if r is None else r >= 1.2)} |")
    a, b = cpu_per_gbps("iperf1", dso), cpu_per_gbps("iperf1", "haproxy")
    r = None if None in (a, b) or not b else a / b
    out.append(f"| CPU per Gb/s ≤ 0.5× HAProxy (1 stream) | {fmt(r)}× ({fmt(a, 1)} vs {fmt(b, 1)} "
               f"CPU %/Gb/s) | {verdict(None if r is None else r <= 0.5)} |")
    a = med("rss", dso, "idle_kib")
    out.append(f"| RSS ≤ 10 MB idle | {fmt(None if a is None else a / 1024, 1)} MiB "
               f"| {verdict(None if a is None else a * 1024 <= 10e6)} |")
    base, loaded = med("idle", dso, "base_kib"), med("idle", dso, "loaded_kib")
    n = med("idle", dso, "connections")
    per = None if None in (base, loaded) or not n else (loaded - base) * 1024 / n
    out.append(f"| ≤ 16 KiB per idle connection | {fmt(None if per is None else per / 1024, 1)} KiB "
               f"| {verdict(None if per is None else per <= 16 * 1024)} |")
    print("\n".join(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ticks")
    p.add_argument("pids", nargs="+")
    p.set_defaults(func=cmd_ticks)
    p = sub.add_parser("rss")
    p.add_argument("pids", nargs="+")
    p.set_defaults(func=cmd_rss)
    p = sub.add_parser("iperf")
    p.add_argument("file")
    p.set_defaults(func=cmd_iperf)
    p = sub.add_parser("redis")
    p.add_argument("file")
    p.set_defaults(func=cmd_redis)
    p = sub.add_parser("idle")
    p.add_argument("--listen", required=True, help="proxy listen address HOST:PORT")
    p.add_argument("--hold-port", type=int, required=True, help="loopback port of the holder")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to open them all")
    p.add_argument("--pids", nargs="+", required=True, help="proxy process(es) to measure")
    p.set_defaults(func=cmd_idle)
    p = sub.add_parser("summarize")
    p.add_argument("tsv")
    p.set_defaults(func=cmd_summarize)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
