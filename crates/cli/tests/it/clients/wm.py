"""pywatchman driving cj's Watchman endpoint, for crates/cli/tests/it/watchman.rs.

    wm.py SOCK clock ROOT
    wm.py SOCK query ROOT CLOCK          files changed since CLOCK
    wm.py SOCK subscribe ROOT CLOCK NEW  subscribe, create ROOT/NEW, wait for it

Prints one JSON object. Names are hex of their bytes (lossless).
"""
import json
import os
import sys
import time

import pywatchman


def hexname(n):
    return (n if isinstance(n, bytes) else os.fsencode(n)).hex()


def main():
    sock, cmd, root = sys.argv[1], sys.argv[2], sys.argv[3]
    c = pywatchman.client(sockpath=sock, timeout=120)
    caps = c.capabilityCheck(optional=[], required=["relative_root", "term-suffix"])
    assert caps["capabilities"]["relative_root"], caps
    w = c.query("watch-project", root)
    top = w["watch"]
    if cmd == "clock":
        out = {"clock": c.query("clock", top, {"sync_timeout": 10000})["clock"]}
    elif cmd == "query":
        q = {"since": sys.argv[4], "fields": ["name", "exists", "type"]}
        if "relative_path" in w:
            q["relative_root"] = w["relative_path"]
        r = c.query("query", top, q)
        out = {
            "fresh": r["is_fresh_instance"],
            "clock": r["clock"],
            "files": [hexname(f["name"]) for f in r["files"]],
        }
    elif cmd == "subscribe":
        c.query("subscribe", top, "s", {"since": sys.argv[4], "fields": ["name"]})
        new = sys.argv[5]
        with open(os.path.join(root, new), "w") as f:
            f.write("x")
        seen = False
        deadline = time.time() + 30
        while not seen and time.time() < deadline:
            try:
                c.receive()
            except pywatchman.SocketTimeout:
                continue
            for pdu in c.getSubscription("s") or []:
                names = [n if isinstance(n, str) else os.fsdecode(n) for n in pdu.get("files", [])]
                seen = seen or new in names
        out = {"seen": seen}
    else:
        raise SystemExit("unknown command " + cmd)
    c.close()
    print(json.dumps(out))


main()
