"""Profile Stem's worker and client with py-spy during the no-op scenario.

    python bench/profile.py [--count 10000] [--py-spy PATH]

Starts a private redis-server and a `stem worker`, runs the no-op scenario's
client, and samples both processes with py-spy. py-spy counts a thread that
waits for a Redis reply as active, so ``--gil`` keeps only the samples of
threads that hold the GIL, which is where Python spends CPU. Prints,
for each process, the functions with the most samples: "self" counts samples
where the function itself ran, "total" counts samples where it was on the
stack. Also prints the CPU time per task of Redis and of the worker, to
compare with the client's.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server import Counters, RedisServer, process_tree_cpu_s
from systems import Settings, Stem

_FRAME_LINE = re.compile(r":\d+\)$")


def spy(
    py_spy: str, pid: int, out: Path, rate: int, gil: bool
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
         "--output", str(out), "--nonblocking", *(["--gil"] if gil else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def top(raw: Path, limit: int) -> str:
    """Return the top functions of a py-spy raw (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_FRAME_LINE.sub(")", frame) for frame in stack.split(";")]
        # py-spy puts the thread's name first when it is known.
        frames = [frame for frame in frames if not frame.startswith("thread")]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples", "self%  total%  function"]
    for frame, count in total.most_common(limit):
        lines.append(
            f"{100 * own[frame] / samples:5.1f}  {100 * count / samples:6.1f}  {frame}"
        )
    lines.append("by self time:")
    for frame, count in own.most_common(limit):
        lines.append(f"{100 * count / samples:5.1f}  {frame}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only threads that hold the GIL: Python CPU, not waits",
    )
    parser.add_argument(
        "--stem-concurrency", type=int, default=Settings().stem_concurrency
    )
    parser.add_argument(
        "--py-spy",
        default=shutil.which("py-spy") or "/work/venvs/bench-tools/bin/py-spy",
    )
    args = parser.parse_args()
    if not os.access(args.py_spy, os.X_OK):
        raise SystemExit(
            f"py-spy is not found at {args.py_spy}; install it (pip install py-spy) "
            "and pass --py-spy PATH."
        )
    server = RedisServer()
    folder = Path(tempfile.mkdtemp(prefix="stem-bench-profile-"))
    try:
        stem = Stem(Settings(stem_concurrency=args.stem_concurrency), server.url)
        worker = stem.start_worker()
        try:
            command, cwd = stem.client_command("warmup", 0, 60)
            subprocess.run(command, cwd=cwd, check=True, capture_output=True)
            command, cwd = stem.client_command("noop", args.count, 300)
            before = Counters.read(server.client)
            worker_cpu = process_tree_cpu_s(worker.pid)
            started = time.monotonic()
            client = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE)
            spies = [
                spy(
                    args.py_spy, worker.pid, folder / "worker.txt", args.rate, args.gil
                ),
                spy(
                    args.py_spy, client.pid, folder / "client.txt", args.rate, args.gil
                ),
            ]
            client_out, _ = client.communicate()
            elapsed = time.monotonic() - started
            after = Counters.read(server.client)
            worker_cpu = process_tree_cpu_s(worker.pid) - worker_cpu
            for process in spies:
                process.send_signal(signal.SIGINT)
                process.wait(30)
        finally:
            worker.stop()
        print(f"client: {client_out.decode().strip()}")
        count = args.count
        print(
            f"per task over {elapsed:.1f} s: Redis CPU "
            f"{(after.cpu_s - before.cpu_s) / count * 1e6:.0f} µs, worker CPU "
            f"{worker_cpu / count * 1e6:.0f} µs (concurrency "
            f"{args.stem_concurrency}, threads)"
        )
        for name in ("worker", "client"):
            path = folder / f"{name}.txt"
            print(f"\n== {name} ==")
            print(top(path, args.top) if path.exists() else "no samples")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
