#!/usr/bin/env python3
"""Plots of bench/all's figures (PNG), from the cells bench/tables.py kept.

    bench/plots.py RAW_DIR OUT_DIR

Writes what the runs allow, each point the median over the runs with a bar
from the min to the max:
  overhead.png          workload wall time per listener, x no listener
  query-range.png       answer time against the size of the range
  reconcile-time.png    reconcile time against tree size, per filesystem
  reconcile-memory.png  daemon peak memory against tree size
Needs matplotlib (Debian: python3-matplotlib); without it, says so and
writes nothing (the tables do not depend on it).
"""
import glob
import json
import os
import re
import statistics
import sys


def num(cell):
    cell = cell.replace(",", "").replace("*", "").rstrip(" %")
    try:
        return float(cell)
    except ValueError:
        return None


def spread(values, part=None):
    """(median, min, max) of one cell over the runs; `part` picks a
    component of `a / b / c` cells (then min of part 0, max of part 2)."""
    if part is None:
        xs = [num(v) for v in values]
        xs = [x for x in xs if x is not None]
        return (statistics.median(xs), min(xs), max(xs)) if xs else None
    parts = [[num(x) for x in v.split(" / ")] for v in values]
    if any(len(p) != 3 or None in p for p in parts):
        return None
    return (
        statistics.median(p[1] for p in parts),
        min(p[0] for p in parts),
        max(p[2] for p in parts),
    )


def load(raw, slug):
    try:
        with open(f"{raw}/{slug}.json") as f:
            return json.load(f)
    except OSError:
        return []


def column(table, name):
    head = [c[0] for c in table[0]]
    for i, h in enumerate(head):
        if h.startswith(name):
            return i
    return None


def bars(ax, xs, stats, **kw):
    med = [s[0] for s in stats]
    err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
    return ax.errorbar(xs, med, yerr=err, capsize=4, marker="o", **kw)


def overhead(plt, raw, out):
    tables = load(raw, "run")
    if not tables:
        return None
    t = tables[0]
    col = column(t, "x no listener")
    if col is None:
        return None
    names, stats = [], []
    for row in t[2:]:
        s = spread(row[col])
        if s:
            names.append(row[0][0])
            stats.append(s)
    fig, ax = plt.subplots(figsize=(7, 4))
    med = [s[0] for s in stats]
    err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
    ax.bar(names, med, yerr=err, capsize=4, color="#4c72b0")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("workload wall time, x no listener")
    ax.set_title("Capture overhead (bench/run)")
    return save(fig, out, "overhead.png")


def query_range(plt, raw, out):
    for t in load(raw, "query"):
        if t[0][0][0] != "range records":
            continue
        xs, stats = [], []
        for row in t[2:]:
            x, s = num(row[0][0]), spread(row[2], part=1)
            if x and s:
                xs.append(x)
                stats.append(s)
        if not xs:
            return None
        fig, ax = plt.subplots(figsize=(7, 4))
        bars(ax, xs, stats)
        ax.set_xscale("log")
        ax.set_xlabel("journal records in the range")
        ax.set_ylabel("`changes --since` on the socket, ms")
        ax.set_title("Answer time against range size (bench/query)")
        return save(fig, out, "query-range.png")
    return None


def reconcile(plt, raw, out, name, title, ylabel, file, logy=False):
    points = {}
    for path in glob.glob(f"{raw}/reconcile-*.json"):
        size = int(re.search(r"reconcile-(\d+)\.json$", path).group(1))
        tables = load(raw, os.path.basename(path)[:-5])
        if not tables:
            continue
        t = tables[0]
        col = column(t, name)
        if col is None:
            continue
        for row in t[2:]:
            s = spread(row[col])
            if s:
                points.setdefault(row[0][0], []).append((size, s))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for fs, pts in sorted(points.items()):
        pts.sort()
        bars(ax, [p[0] for p in pts], [p[1] for p in pts], label=fs)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("files in the tree")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save(fig, out, file)


def save(fig, out, name):
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=100)
    return path


def main():
    raw, out = sys.argv[1], sys.argv[2]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (Debian: python3-matplotlib): no plots")
        return
    os.makedirs(out, exist_ok=True)
    made = [
        overhead(plt, raw, out),
        query_range(plt, raw, out),
        reconcile(plt, raw, out, "reconcile warm s", "Reconcile after a restart (warm cache)",
                  "seconds until the answer is complete", "reconcile-time.png", logy=True),
        reconcile(plt, raw, out, "reconcile peak RSS MB", "Daemon peak memory while reconciling",
                  "peak RSS, MB", "reconcile-memory.png"),
    ]
    for m in made:
        if m:
            print(f"plot: {m}")


if __name__ == "__main__":
    main()
