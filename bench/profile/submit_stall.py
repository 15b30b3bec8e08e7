"""Measure the longest Redis stall while one client submits a large chord.

A second client, in its own process so the submitter's Python work does
not delay it, sends PING in a loop during the submit and records the
slowest round trip: every script call blocks the server for its whole run,
so a PING sent during the longest call waits for it. The server's SLOWLOG
reports the slowest command too, measured inside Redis. The script starts
its own redis-server on a free loopback port unless ``--url`` names one, and
never writes outside a fresh key prefix.

Run it from the repository root:

    python bench/profile/submit_stall.py --members 100000
    python bench/profile/submit_stall.py --members 100000 --submit-chunk 0

``--submit-chunk 0`` sends the whole run in one script call, as before
chunked submission existed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Any

import redis

from stem.canvas import chord, compile_canvas, signature
from stem.drivers.redis.driver import RedisDriver
from stem.engine.errors import DriverError


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start_server() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH; install Redis 7.")
    workdir = tempfile.mkdtemp(prefix="stem-stall-")
    port = _free_port()
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return server, url, workdir


def _ping_loop(url: str, stop: Any, worst: Any) -> None:
    client = redis.Redis.from_url(url)
    while not stop.is_set():
        began = time.perf_counter()
        while True:
            try:
                client.ping()
                break
            except (redis.ResponseError, redis.TimeoutError) as err:
                # A script that runs past busy-reply-threshold makes Redis
                # reply BUSY, so the stall lasts until a PING succeeds.
                if isinstance(err, redis.ResponseError) and "BUSY" not in str(err):
                    raise
                time.sleep(0.01)
        worst.value = max(worst.value, time.perf_counter() - began)
    client.close()


def _wait_until_free(client: Any) -> None:
    """Wait until Redis replies again after a script that outlived the client."""
    while True:
        try:
            client.ping()
            return
        except (redis.ResponseError, redis.TimeoutError):
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--url", help="an existing Redis; default: start one")
    parser.add_argument(
        "--submit-chunk",
        type=int,
        default=None,
        help="field pairs per submit call; 0 means one call; default: the driver's",
    )
    options = parser.parse_args()

    server = None
    url = options.url
    if url is None:
        server, url, workdir = _start_server()
    try:
        canvas = chord(
            [signature("add", (i, i)) for i in range(options.members)],
            signature("total"),
        )
        began = time.perf_counter()
        spec = compile_canvas(canvas)
        took = time.perf_counter() - began
        print(f"compiled {len(spec.nodes)} nodes in {took:.2f} s")
        settings = {}
        if options.submit_chunk is not None:
            settings["submit_chunk"] = options.submit_chunk or 10**12
        driver = RedisDriver(url, prefix=f"stall-{uuid.uuid4().hex[:8]}:", **settings)
        observer = redis.Redis.from_url(url, decode_responses=True)
        observer.config_set("slowlog-log-slower-than", 1000)
        observer.config_set("slowlog-max-len", 10000)
        observer.slowlog_reset()
        stop = multiprocessing.Event()
        worst = multiprocessing.Value("d", 0.0)
        pinger = multiprocessing.Process(target=_ping_loop, args=(url, stop, worst))
        pinger.start()
        time.sleep(0.2)
        began = time.perf_counter()
        try:
            driver.submit("stall-run", spec)
        except DriverError as err:
            print(f"submit failed: {err}")
        elapsed = time.perf_counter() - began
        _wait_until_free(observer)
        time.sleep(0.2)
        stop.set()
        pinger.join()
        driver.close()
        slow = observer.slowlog_get(10000)
        slowest = max(slow, key=lambda entry: entry["duration"], default=None)
        observer.close()
        print(
            f"submitted {options.members} members in {elapsed:.2f} s; "
            f"longest PING round trip {worst.value * 1000:.1f} ms"
        )
        if slowest is None:
            print("no command took 1 ms or more")
        else:
            print(f"{len(slow)} commands took 1 ms or more; the slowest:")
            slow.sort(key=lambda entry: entry["duration"], reverse=True)
            for entry in slow[:5]:
                command = " ".join(str(part) for part in entry["command"].split()[3:7])
                print(f"  {entry['duration'] / 1000:.1f} ms: {command}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
