#!/usr/bin/env python3
"""Folds repeated runs of one benchmark into one table (bench/all).

    bench/tables.py RAW_DIR SLUG

reads RAW_DIR/SLUG.1.txt, RAW_DIR/SLUG.2.txt, ... (the output of each run
of the same command), prints run 1's output with every numeric table cell
replaced by `median (min-max)` over the runs, and writes the cells of every
run to RAW_DIR/SLUG.json for bench/plots.py.

A cell that holds `a / b / c` (a benchmark's own min / median / max) becomes
the min of the mins, the median of the medians and the max of the maxes; a
cell that lists a benchmark's own runs (numbers and spaces) lists every
run's, separated by ` ; `. A
row whose text cells differ between runs is printed as run 1 has it. Lines
outside tables are run 1's.
"""
import json
import os
import re
import statistics
import sys

NUM = re.compile(r"^-?\d+(\.\d+)?( %)?$")


def blocks(lines):
    """Splits lines into tables (lists of rows of cells) and other lines."""
    out, table = [], None
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if table is None:
                table = []
                out.append(("table", table))
            table.append(cells)
        else:
            table = None
            out.append(("text", line))
    return out


def number(cell):
    cell = cell.replace(",", "").replace("*", "")
    if NUM.match(cell):
        return float(cell.rstrip(" %"))
    return None


def fmt(x, like):
    digits = len(like.split(".")[1].rstrip(" %*")) if "." in like else 0
    s = f"{x:.{digits}f}"
    return s + (" %" if like.rstrip("*").endswith("%") else "")


def numbers(cell):
    """A cell that is only numbers separated by spaces (a benchmark's list
    of its own runs)."""
    parts = cell.split()
    return len(parts) > 1 and all(number(p) is not None for p in parts)


def fold(cells):
    """One cell from the same cell of every run."""
    first = cells[0]
    if len(cells) == 1:
        return first
    if all(numbers(c) for c in cells):
        return " ; ".join(cells)
    parts = [c.split(" / ") for c in cells]
    if len({len(p) for p in parts}) != 1:
        return first
    nums = [[number(x) for x in p] for p in parts]
    if any(v is None for p in nums for v in p):
        return first
    width = len(nums[0])
    if width == 3:
        lo = min(p[0] for p in nums)
        mid = statistics.median(p[1] for p in nums)
        hi = max(p[2] for p in nums)
        like = parts[0]
        return f"{fmt(lo, like[0])} / {fmt(mid, like[1])} / {fmt(hi, like[2])}"
    out = []
    for k in range(width):
        xs = [p[k] for p in nums]
        like = parts[0][k]
        med, lo, hi = statistics.median(xs), min(xs), max(xs)
        if lo == hi:
            out.append(fmt(med, like))
        else:
            out.append(f"{fmt(med, like)} ({fmt(lo, like)}-{fmt(hi, like)})")
    return " / ".join(out)


def main():
    raw, slug = sys.argv[1], sys.argv[2]
    runs = []
    i = 1
    while os.path.exists(f"{raw}/{slug}.{i}.txt"):
        with open(f"{raw}/{slug}.{i}.txt", encoding="utf-8", errors="replace") as f:
            runs.append(blocks(f.read().splitlines()))
        i += 1
    if not runs:
        print(f"(no output from {slug})")
        return
    tables_of = [[b[1] for b in r if b[0] == "table"] for r in runs]
    json_tables = []
    t = 0
    if len(runs) > 1:
        print(f"{len(runs)} runs; numbers are the median (min-max) over the runs.")
        print()
    for kind, body in runs[0]:
        if kind == "text":
            print(body)
            continue
        # Markdown needs blank lines around a table.
        print()
        same = [ts[t] for ts in tables_of if t < len(ts) and len(ts[t]) == len(body)]
        t += 1
        rows = []
        for j, row in enumerate(body):
            versions = [tab[j] for tab in same if len(tab[j]) == len(row)]
            texts = {
                tuple(c for c in v if number(c.split(" / ")[0]) is None and not numbers(c))
                for v in versions
            }
            if j < 2 or len(texts) != 1:
                print("| " + " | ".join(row) + " |")
                rows.append([[c] for c in row])
                continue
            cells = [fold([v[k] for v in versions]) for k in range(len(row))]
            print("| " + " | ".join(cells) + " |")
            rows.append([[v[k] for v in versions] for k in range(len(row))])
        json_tables.append(rows)
        print()
    with open(f"{raw}/{slug}.json", "w") as f:
        json.dump(json_tables, f)


if __name__ == "__main__":
    main()
