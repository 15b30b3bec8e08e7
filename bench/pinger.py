"""Ping a Redis server in a tight loop and report the longest round trip.

Run as ``python pinger.py PORT``; it pings until its standard input closes,
then prints one JSON line: pings replied to, BUSY replies, the longest round
trip and the round trips over 1, 10 and 100 ms. A script or MULTI that
holds the server shows up here as one long round trip.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def main() -> None:
    port = int(sys.argv[1])
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"*1\r\n$4\r\nPING\r\n"
    longest = 0.0
    over = {"1ms": 0, "10ms": 0, "100ms": 0}
    pings = 0
    busy = 0
    print("ready", file=sys.stderr, flush=True)
    # A script that runs past lua-time-limit makes the server reply BUSY at
    # once. The stall lasts until the next PONG, so it is timed from the
    # request after the last PONG.
    stalled_since = None
    while not stop.is_set():
        started = time.perf_counter() if stalled_since is None else stalled_since
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += sock.recv(4096)
        if not reply.startswith(b"+PONG"):
            busy += 1
            stalled_since = started
            time.sleep(0.001)
            continue
        stalled_since = None
        rtt = time.perf_counter() - started
        pings += 1
        longest = max(longest, rtt)
        if rtt > 0.001:
            over["1ms"] += 1
        if rtt > 0.01:
            over["10ms"] += 1
        if rtt > 0.1:
            over["100ms"] += 1
    result = {
        "pings": pings,
        "busy_replies": busy,
        "max_rtt_ms": longest * 1000,
        "over": over,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
