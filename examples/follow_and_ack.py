#!/usr/bin/env python3
"""A cj client in Python, written from docs/protocol.md alone.

Follows the journal as a durable consumer, prints each change, and
acknowledges its place so that a restart (of this program, of the daemon,
or of the machine) resumes exactly where it left off.

    cj consumer add indexer /srv/data
    python3 examples/follow_and_ack.py --consumer indexer

Only the standard library is used. Paths are bytes: a path that is not
UTF-8 arrives as `path_b64` and is decoded to the exact bytes here.
"""

import argparse
import base64
import json
import os
import socket
import sys
import time

# Errors after which the stream can be resumed from the last cursor.
RESUMABLE = {"shutting_down", "slow_consumer", "busy", "timeout"}


class DaemonError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Connection:
    """One connection: JSON request lines out, JSON answer lines in."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")

    def send(self, request):
        self.sock.sendall(json.dumps(request).encode() + b"\n")

    def line(self):
        raw = self.file.readline()
        if not raw.endswith(b"\n"):
            # End of stream, or a line cut short: not a line.
            raise ConnectionError("the daemon closed the connection")
        obj = json.loads(raw)
        if "error" in obj:
            raise DaemonError(obj.get("code", ""), obj["error"])
        return obj

    def ask(self, request):
        self.send(request)
        return self.line()

    def close(self):
        self.sock.close()


def path_of(obj, stem="path"):
    """The exact bytes of a path field (`F` or `F_b64`)."""
    if stem in obj:
        return obj[stem].encode("utf-8", "surrogateescape")
    if stem + "_b64" in obj:
        return base64.b64decode(obj[stem + "_b64"])
    return None


def show(path):
    return ascii(os.fsdecode(path))


class Control:
    """A connection for requests beside the stream (the daemon closes
    connections idle for a minute: reconnect once when that happened)."""

    def __init__(self, path):
        self.path = path
        self.conn = None

    def ask(self, request):
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.conn = Connection(self.path)
                return self.conn.ask(request)
            except (ConnectionError, OSError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise


def follow(sock_path, consumer, stop_name, ack_every):
    control = Control(sock_path)
    hello = control.ask({"op": "hello", "protocol": 1})
    if "follow" not in hello.get("capabilities", []):
        sys.exit("this cj daemon cannot follow; upgrade it")
    print(f"connected to {hello['server']} (protocol {hello['protocol']})", flush=True)

    last_cursor = None  # resume point: the cursor of the last line handled
    unacked = 0
    while True:
        try:
            stream = Connection(sock_path)
        except OSError as e:
            print(f"cannot connect ({e}); retrying", file=sys.stderr, flush=True)
            time.sleep(0.5)
            continue
        request = {"op": "follow", "consumer": consumer}
        if last_cursor:
            request["since"] = last_cursor
        try:
            stream.send(request)
            while True:
                obj = stream.line()
                cursor = obj["cursor"]
                if "path" in obj or "path_b64" in obj:
                    path = path_of(obj)
                    extra = ""
                    old = path_of(obj, "renamed_from")
                    if old is not None:
                        extra = f" from {show(old)}"
                    print(f"change {','.join(obj['changes'])} {show(path)}{extra}", flush=True)
                    unacked += 1
                elif "rescan" in obj:
                    for scope in obj["rescan"]:
                        print(f"rescan {scope['reason']} {show(path_of(scope))}", flush=True)
                elif obj.get("history_done"):
                    print("history done; live from here", flush=True)
                last_cursor = cursor
                stop = stop_name and "path" in obj and obj["path"].endswith("/" + stop_name)
                if unacked >= ack_every or obj.get("history_done") or stop:
                    control.ask({"op": "consumer_ack", "consumer": consumer, "cursor": cursor})
                    unacked = 0
                if stop:
                    return
        except DaemonError as e:
            if e.code not in RESUMABLE:
                sys.exit(f"cj: {e}")
            print(f"resuming after: {e}", file=sys.stderr, flush=True)
        except (ConnectionError, OSError) as e:
            print(f"daemon went away ({e}); reconnecting", file=sys.stderr, flush=True)
        finally:
            stream.close()
        # The daemon may be restarting: wait a little, then resume.
        time.sleep(0.5)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", default=os.environ.get("CJ_SOCKET", "/run/cj/cj.sock"))
    p.add_argument("--consumer", required=True)
    p.add_argument("--stop-name", help="exit after a change to a file of this name")
    p.add_argument("--ack-every", type=int, default=100)
    a = p.parse_args()
    follow(a.socket, a.consumer, a.stop_name, a.ack_every)


if __name__ == "__main__":
    main()
