#!/usr/bin/env python3
"""A downstream reader of `cj export nats` (docs/export.md): builds a
fleet-wide "what changed where" table from the JetStream stream, and resumes
where it stopped.

    fleet_reader.py NATS_URL STREAM STATE_DIR

STATE_DIR/position holds the last stream sequence read; STATE_DIR/table.json
the table: host -> path -> {"changes", "seq"}, plus "rescan": host -> paths
that must be read again (a gap in that host's history, until its
`resolved`). Prints a summary as JSON. Each (journal, seq) arrives once and
in order; the reader checks that too.

Needs nats-py (pip install nats-py).
"""

import asyncio
import base64
import json
import os
import sys

import nats


def path_of(rec, stem="path"):
    if stem in rec:
        return rec[stem]
    if stem + "_b64" in rec:
        # Names that are not UTF-8: kept as their base64 form.
        return "b64:" + rec[stem + "_b64"]
    return None


async def main(url, stream, state_dir):
    os.makedirs(state_dir, exist_ok=True)
    pos_file = os.path.join(state_dir, "position")
    table_file = os.path.join(state_dir, "table.json")
    position = int(open(pos_file).read()) if os.path.exists(pos_file) else 0
    table = json.load(open(table_file)) if os.path.exists(table_file) else {
        "hosts": {}, "rescan": {}, "last_seq": {}}
    nc = await nats.connect(url)
    js = nc.jetstream()
    last = (await js.stream_info(stream)).state.last_seq
    read = 0
    out_of_order = 0
    for n in range(position + 1, last + 1):
        msg = await js.get_msg(stream, n)
        rec = json.loads(msg.data)
        host, journal, seq = rec["host"], rec["journal"], rec["seq"]
        if seq <= table["last_seq"].get(journal, 0):
            out_of_order += 1
        table["last_seq"][journal] = max(seq, table["last_seq"].get(journal, 0))
        if "rescan" in rec:
            scopes = table["rescan"].setdefault(host, [])
            for s in rec["rescan"]:
                p = path_of(s)
                if p not in scopes:
                    scopes.append(p)
        elif "resolved" in rec:
            done = [path_of(s) for s in rec["resolved"]]
            table["rescan"][host] = [
                p for p in table["rescan"].get(host, [])
                if not any(p == d or p.startswith(d.rstrip("/") + "/") for d in done)]
        else:
            entry = {"changes": rec.get("changes", []), "seq": seq}
            table["hosts"].setdefault(host, {})[path_of(rec)] = entry
            old = path_of(rec, "renamed_from")
            if old is not None:
                table["hosts"][host][old] = {"changes": ["renamed_from"], "seq": seq}
        read += 1
        position = n
    await nc.close()
    json.dump(table, open(table_file + ".new", "w"))
    os.replace(table_file + ".new", table_file)
    with open(pos_file + ".new", "w") as f:
        f.write(str(position))
    os.replace(pos_file + ".new", pos_file)
    print(json.dumps({
        "read": read,
        "position": position,
        "out_of_order": out_of_order,
        "paths": {h: len(p) for h, p in table["hosts"].items()},
        "rescan": table["rescan"],
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
