#!/usr/bin/env python3
"""Where a journal's bytes go (issue 16, item 3), read from the segment
format of docs/design.md 5.2-5.4 (an independent reader: it trusts nothing
but the design).

    bench/record_bytes.py JOURNAL_DIR

Prints one table: bytes per event record by part (frame header, fixed
payload, handles, names, paths, stat, gap seq, padding), averaged over the
event records of every segment, and the other record types' share.
"""
import glob
import os
import struct
import sys

SEGMENT_HEADER = 64
FRAME_HEADER = 32


def main():
    journal = sys.argv[1]
    parts = dict.fromkeys(
        ["frame header", "fixed payload", "object handle", "directory handles",
         "name", "old name", "path", "old path", "stat", "gap seq", "padding"], 0)
    events = other = other_bytes = 0
    total = 0
    for seg in sorted(glob.glob(os.path.join(journal, "*.cjseg")) +
                      glob.glob(os.path.join(journal, "segments", "*"))):
        with open(seg, "rb") as f:
            b = f.read()
        total += len(b)
        at = SEGMENT_HEADER
        while at + FRAME_HEADER <= len(b):
            (length,) = struct.unpack_from("<I", b, at)
            if length < FRAME_HEADER or at + length > len(b):
                break  # the tail: zero or torn
            padded = (length + 7) // 8 * 8
            kind = b[at + 24]
            if kind != 1:
                other += 1
                other_bytes += padded
                at += padded
                continue
            p = at + FRAME_HEADER
            flags = b[p + 5]
            hlen, dlen, odlen = b[p + 28], b[p + 29], b[p + 30]
            name, old_name = struct.unpack_from("<HH", b, p + 32)
            path, old_path = struct.unpack_from("<II", b, p + 36)
            events += 1
            parts["frame header"] += FRAME_HEADER
            parts["fixed payload"] += 48
            parts["object handle"] += hlen
            parts["directory handles"] += dlen + odlen
            parts["name"] += name
            parts["old name"] += old_name
            parts["path"] += path
            parts["old path"] += old_path
            parts["stat"] += 48 if flags & 8 else 0
            parts["gap seq"] += 8 if flags & 16 else 0
            parts["padding"] += padded - length
            at += padded
    if not events:
        print(f"no event records under {journal}")
        return
    print(f"Journal: {total / 1e6:.1f} MB in segments; {events} event records, "
          f"{other} other records ({other_bytes / 1e3:.0f} kB).")
    print()
    print("| part of an event record | bytes per record | share |")
    print("|---|---|---|")
    per = sum(parts.values()) / events
    for k, v in parts.items():
        print(f"| {k} | {v / events:.1f} | {100 * v / events / per:.0f} % |")
    print(f"| **total** | **{per:.1f}** | 100 % |")


if __name__ == "__main__":
    main()
