"""Measure the lowest CPU cost per task of a Python queue on redis-py + hiredis.

No Stem code runs here. Each variant has the protocol shape of Stem's no-op
path, with as little Python around the Redis calls as possible. Its CPU per
task is thus a floor for any implementation of that shape in CPython with
redis-py on the same machine.

Run from the repository root:
``python bench/profile/floor.py [--tasks N] [--batch B] [--repeat R]
[--variants streams,scripts,calls,handoff] [--overlap [--clients K]]``.

Variants:

``streams``
    The bare Streams queue. The client XADDs each task (pipelined in
    batches of ``--batch``). A worker reads with XREADGROUP COUNT B, calls a
    no-op function per message and sends an XACK and a result HSET per
    message in one pipeline. The client then reads each result with HGET,
    pipelined.
``scripts``
    The same with each state change as one EVALSHA of a short Lua script
    that calls the commands Stem's semantics need at minimum. ``submit``
    writes the run hash, XADDs to the queue and the event stream and counts
    the state (4 commands). ``claim`` checks and writes the state, adds an
    event and moves the count (5). ``complete`` writes the state and result,
    XACKs, adds an event, moves the count and sets the expiry (6). ``get``
    reads the run with one script call (1). Every call is pipelined in
    batches of ``--batch``. ``--batch 1`` gives one round trip per call.
``calls``
    redis-py's cost per call: EVALSHA of ``return 1`` with one round trip
    each, the same pipelined in batches of ``--batch``, PING, and PING
    written to and read from the connection's socket without redis-py.
``handoff``
    Python's own cost of a no-op function: a plain call, a
    ``ThreadPoolExecutor`` of 4 threads, and a ``queue.Queue`` pair to one
    worker thread and back.

For each phase it prints tasks/s (wall time), this process's CPU per task
and Redis's CPU per task (INFO cpu). It also prints Redis commands per task
(INFO commandstats, which counts the commands called inside scripts) and
round trips per task (requests this process sends, a pipeline counting
once). With
``--overlap``, the worker of ``streams`` and ``scripts`` runs in a forked
process while the client submits and then reads the results, as in the
end-to-end benchmark, and the worker's CPU comes from ``wait4``.
``--clients K`` runs K client processes there, each with its share of the
tasks, and their CPU comes from ``wait4`` too. The summary gives min,
median and max over the repeats and the ceiling that the CPU per task
implies on 2 cores: 2e6 / (sum of CPU us per task).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import resource
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import redis
from common import RoundTrips, arguments, command_usage, private_redis, server_cpu_s

#: Milliseconds a worker blocks in XREADGROUP while it waits for tasks.
BLOCK_MS = 100
#: Seconds to wait for all tasks before giving up.
CAP_S = 300.0
#: Milliseconds to keep a finished run hash: one day.
RESULT_TTL_MS = 86_400_000

SUBMIT_LUA = """
redis.call('HSET', KEYS[1], 'state', 'queued', 'task', ARGV[2], 'args', ARGV[3])
redis.call('XADD', KEYS[2], '*', 'run', ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'run', ARGV[1],
  'state', 'queued')
redis.call('HINCRBY', KEYS[4], 'queued', 1)
return 1
"""

CLAIM_LUA = """
local found = redis.call('HMGET', KEYS[1], 'state', 'args')
if found[1] ~= 'queued' then return false end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'run', ARGV[1],
  'state', 'running')
redis.call('HINCRBY', KEYS[3], 'queued', -1)
redis.call('HINCRBY', KEYS[3], 'running', 1)
return found[2]
"""

COMPLETE_LUA = """
redis.call('HSET', KEYS[1], 'state', 'succeeded', 'result', ARGV[3])
redis.call('XACK', KEYS[2], ARGV[4], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'run', ARGV[1],
  'state', 'succeeded')
redis.call('HINCRBY', KEYS[4], 'running', -1)
redis.call('HINCRBY', KEYS[4], 'succeeded', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

READ_LUA = """
local found = redis.call('HMGET', KEYS[1], 'state', 'result')
if found[1] ~= 'succeeded' then return false end
return found[2]
"""

TRIVIAL_LUA = "return 1"

QUEUE = "q"
GROUP = "g"
EVENTS = "events"
COUNTS = "counts"


def noop() -> None:
    return None


ROUND_TRIPS = RoundTrips()


@dataclass
class Figures:
    """One phase's figures: wall time, CPU and Redis counters, per task."""

    tasks: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    commands: float = 0.0
    round_trips: int = 0
    polls: int = 0
    breakdown: dict[str, float] = field(default_factory=dict)

    def per_task(self) -> dict[str, float]:
        return {
            "tasks/s": self.tasks / self.wall_s if self.wall_s else 0.0,
            "cpu_us": self.cpu_s / self.tasks * 1e6,
            "other_cpu_us": self.other_cpu_s / self.tasks * 1e6,
            "redis_us": self.redis_cpu_s / self.tasks * 1e6,
            "commands": self.commands / self.tasks,
            "round_trips": self.round_trips / self.tasks,
        }


@contextlib.contextmanager
def measured(url: str, tasks: int) -> Iterator[Figures]:
    """Measure the enclosed block: this process's CPU and Redis's counters."""
    figures = Figures(tasks)
    usage_before = command_usage(url)
    redis_before = server_cpu_s(url)
    sent = ROUND_TRIPS.count
    start = time.perf_counter()
    start_cpu = time.process_time()
    yield figures
    figures.cpu_s = time.process_time() - start_cpu
    figures.wall_s = time.perf_counter() - start
    figures.round_trips = ROUND_TRIPS.count - sent
    figures.redis_cpu_s = server_cpu_s(url) - redis_before
    usage_after = command_usage(url)
    for command, (calls, _) in usage_after.items():
        delta = calls - usage_before.get(command, (0, 0))[0]
        # The INFO calls of the measurement are not part of the phase.
        if delta and command != "info":
            figures.breakdown[command] = delta / tasks
    figures.commands = sum(figures.breakdown.values()) * tasks


def local_figures(tasks: int, block: Callable[[], None]) -> Figures:
    """Measure a block that does not use Redis: wall time and CPU only."""
    figures = Figures(tasks)
    start = time.perf_counter()
    start_cpu = time.process_time()
    block()
    figures.cpu_s = time.process_time() - start_cpu
    figures.wall_s = time.perf_counter() - start
    return figures


def run_id(index: int) -> str:
    return f"r{index}"


def send(client: redis.Redis, commands: list[tuple[object, ...]]) -> list[object]:
    """Send commands in one pipeline, or as a plain call when there is one."""
    if len(commands) == 1:
        return [client.execute_command(*commands[0])]
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()


# The streams variant.


def streams_submit(client: redis.Redis, indexes: range, batch: int) -> None:
    for first in range(indexes.start, indexes.stop, batch):
        send(
            client,
            [
                ("XADD", QUEUE, "*", "run", run_id(index), "task", "noop", "args", "[]")
                for index in range(first, min(first + batch, indexes.stop))
            ],
        )


def fetch(client: redis.Redis, batch: int) -> list[tuple[bytes, bytes]]:
    """Read up to ``batch`` new messages: (message id, run id) pairs."""
    reply = client.execute_command(
        "XREADGROUP", "GROUP", GROUP, "w", "COUNT", batch, "BLOCK", BLOCK_MS,
        "STREAMS", QUEUE, ">",
    )  # fmt: skip
    if not reply:
        return []
    return [(message_id, fields[b"run"]) for message_id, fields in reply[0][1]]


def streams_work(client: redis.Redis, tasks: int, batch: int) -> int:
    """Run tasks until ``tasks`` are done; return how many ran."""
    done = 0
    deadline = time.monotonic() + CAP_S
    while done < tasks and time.monotonic() < deadline:
        messages = fetch(client, batch)
        if not messages:
            continue
        commands: list[tuple[object, ...]] = []
        for message_id, run in messages:
            noop()
            commands.append(("XACK", QUEUE, GROUP, message_id))
            commands.append(("HSET", b"res:" + run, "value", "null"))
            done += 1
        send(client, commands)
    return done


def poll_all(
    client: redis.Redis,
    indexes: range,
    batch: int,
    read: Callable[[str], tuple[object, ...]],
) -> int:
    """Read every run's result, polling the unfinished ones; return the polls.

    ``read`` makes the command that reads one run. A reply of None means the
    run has not ended yet.
    """
    polls = 0
    pending = list(indexes)
    deadline = time.monotonic() + CAP_S
    while pending and time.monotonic() < deadline:
        missing = []
        for first in range(0, len(pending), batch):
            chunk = pending[first : first + batch]
            replies = send(client, [read(run_id(index)) for index in chunk])
            for index, reply in zip(chunk, replies, strict=True):
                if reply is None:
                    missing.append(index)
        pending = missing
        if pending:
            polls += 1
            time.sleep(0.001)
    if pending:
        raise SystemExit(f"{len(pending)} runs unfinished after {CAP_S} s")
    return polls


def streams_get(client: redis.Redis, indexes: range, batch: int) -> int:
    return poll_all(client, indexes, batch, lambda run: ("HGET", "res:" + run, "value"))


# The scripts variant.


@dataclass
class Scripts:
    """The SHA1 of each Lua script of the scripts variant."""

    submit: str
    claim: str
    complete: str
    read: str

    @classmethod
    def load(cls, client: redis.Redis) -> Scripts:
        return cls(
            submit=client.script_load(SUBMIT_LUA),
            claim=client.script_load(CLAIM_LUA),
            complete=client.script_load(COMPLETE_LUA),
            read=client.script_load(READ_LUA),
        )


def scripts_submit(
    client: redis.Redis, sha: Scripts, indexes: range, batch: int
) -> None:
    for first in range(indexes.start, indexes.stop, batch):
        commands: list[tuple[object, ...]] = []
        for index in range(first, min(first + batch, indexes.stop)):
            run = run_id(index)
            keys = ("run:" + run, QUEUE, EVENTS, COUNTS)
            commands.append(("EVALSHA", sha.submit, 4, *keys, run, "noop", "[]"))
        send(client, commands)


def scripts_work(client: redis.Redis, sha: Scripts, tasks: int, batch: int) -> int:
    """Fetch, claim, run and complete until ``tasks`` are done."""
    done = 0
    deadline = time.monotonic() + CAP_S
    while done < tasks and time.monotonic() < deadline:
        messages = fetch(client, batch)
        if not messages:
            continue
        claimed = send(
            client,
            [
                ("EVALSHA", sha.claim, 3, b"run:" + run, EVENTS, COUNTS, run, "w")
                for _, run in messages
            ],
        )
        commands: list[tuple[object, ...]] = []
        for (message_id, run), args in zip(messages, claimed, strict=True):
            if args is None:
                continue
            noop()
            keys = (b"run:" + run, QUEUE, EVENTS, COUNTS)
            commands.append(
                ("EVALSHA", sha.complete, 4, *keys, run, message_id, "null", GROUP,
                 RESULT_TTL_MS)
            )  # fmt: skip
            done += 1
        if commands:
            send(client, commands)
    return done


def scripts_get(client: redis.Redis, sha: Scripts, indexes: range, batch: int) -> int:
    return poll_all(
        client, indexes, batch, lambda run: ("EVALSHA", sha.read, 1, "run:" + run)
    )


# Running a queue variant: sequential phases or an overlapping worker.


def queue_variant(
    name: str, url: str, tasks: int, client_batch: int, worker_batch: int
) -> dict[str, Figures]:
    """Run submit, then the worker, then get, each phase measured alone."""
    client = redis.Redis.from_url(url)
    client.xgroup_create(QUEUE, GROUP, id="$", mkstream=True)
    phases: dict[str, Figures] = {}
    if name == "streams":
        with measured(url, tasks) as phases["submit"]:
            streams_submit(client, range(tasks), client_batch)
        with measured(url, tasks) as phases["run"]:
            done = streams_work(client, tasks, worker_batch)
        with measured(url, tasks) as phases["get"]:
            streams_get(client, range(tasks), client_batch)
    else:
        sha = Scripts.load(client)
        with measured(url, tasks) as phases["submit"]:
            scripts_submit(client, sha, range(tasks), client_batch)
        with measured(url, tasks) as phases["run"]:
            done = scripts_work(client, sha, tasks, worker_batch)
        with measured(url, tasks) as phases["get"]:
            scripts_get(client, sha, range(tasks), client_batch)
    client.close()
    if done != tasks:
        raise SystemExit(f"{name}: the worker ran {done} of {tasks} tasks")
    return phases


def client_work(
    client: redis.Redis, sha: Scripts | None, indexes: range, batch: int
) -> tuple[float, float, int]:
    """Submit the runs of ``indexes``, then read their results.

    Returns the CPU seconds of this process for the submit and for the
    reads, and the polls for unfinished runs.
    """
    start_cpu = time.process_time()
    if sha is None:
        streams_submit(client, indexes, batch)
    else:
        scripts_submit(client, sha, indexes, batch)
    submit_cpu_s = time.process_time() - start_cpu
    start_cpu = time.process_time()
    if sha is None:
        polls = streams_get(client, indexes, batch)
    else:
        polls = scripts_get(client, sha, indexes, batch)
    return submit_cpu_s, time.process_time() - start_cpu, polls


def fork(work: Callable[[], str]) -> tuple[int, int]:
    """Run ``work`` in a forked process; return its pid and a pipe of its output."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(reader)
        code = 1
        try:
            os.write(writer, work().encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(writer)
    return child, reader


def join(child: int, reader: int) -> tuple[list[str], float]:
    """Wait for a forked process; return the words of its output and its CPU."""
    _, status, usage = os.wait4(child, 0)
    with os.fdopen(reader) as pipe:
        words = pipe.read().split()
    if os.waitstatus_to_exitcode(status) != 0 or not words:
        raise SystemExit(f"forked process {child} failed with status {status}")
    return words, usage.ru_utime + usage.ru_stime


def overlap_variant(
    name: str,
    url: str,
    tasks: int,
    client_batch: int,
    worker_batch: int,
    clients: int,
) -> dict[str, Figures]:
    """Run the worker in a forked process while clients submit and get.

    With one client, it runs in this process. With more, each runs in its
    own forked process and submits and reads its share of the tasks.
    """
    client = redis.Redis.from_url(url)
    client.xgroup_create(QUEUE, GROUP, id="$", mkstream=True)
    sha = Scripts.load(client) if name == "scripts" else None

    def work() -> str:
        worker_client = redis.Redis.from_url(url)
        sent = ROUND_TRIPS.count
        if sha is None:
            done = streams_work(worker_client, tasks, worker_batch)
        else:
            done = scripts_work(worker_client, sha, tasks, worker_batch)
        return f"{done} {ROUND_TRIPS.count - sent}"

    def run_client(indexes: range) -> str:
        own_client = redis.Redis.from_url(url)
        sent = ROUND_TRIPS.count
        submit_cpu_s, get_cpu_s, polls = client_work(
            own_client, sha, indexes, client_batch
        )
        return f"{submit_cpu_s} {get_cpu_s} {polls} {ROUND_TRIPS.count - sent}"

    shares = [
        range(tasks * part // clients, tasks * (part + 1) // clients)
        for part in range(clients)
    ]
    worker = fork(work)
    submit, get = Figures(tasks), Figures(tasks)
    children_cpu_s = 0.0
    children_round_trips = 0
    with measured(url, tasks) as total:
        if clients == 1:
            submit.cpu_s, get.cpu_s, get.polls = client_work(
                client, sha, shares[0], client_batch
            )
        else:
            children = [fork(lambda share=share: run_client(share)) for share in shares]
            for child, reader in children:
                words, cpu_s = join(child, reader)
                submit.cpu_s += float(words[0])
                get.cpu_s += float(words[1])
                get.polls += int(words[2])
                children_round_trips += int(words[3])
                children_cpu_s += cpu_s
    words, worker_cpu_s = join(*worker)
    client.close()
    done = int(words[0])
    if done != tasks:
        raise SystemExit(f"{name}: the worker ran {done} of {tasks} tasks")
    total.cpu_s += children_cpu_s
    total.other_cpu_s = worker_cpu_s
    total.round_trips += int(words[1]) + children_round_trips
    return {"end to end": total, "client submit": submit, "client get": get}


# The calls and handoff variants.


def calls_variant(url: str, tasks: int, batch: int) -> dict[str, Figures]:
    client = redis.Redis.from_url(url)
    sha = client.script_load(TRIVIAL_LUA)
    phases: dict[str, Figures] = {}
    with measured(url, tasks) as phases["evalsha, 1 round trip each"]:
        for _ in range(tasks):
            client.execute_command("EVALSHA", sha, 0)
    with measured(url, tasks) as phases[f"evalsha, pipelined by {batch}"]:
        for first in range(0, tasks, batch):
            send(client, [("EVALSHA", sha, 0)] * (min(first + batch, tasks) - first))
    with measured(url, tasks) as phases["ping, 1 round trip each"]:
        for _ in range(tasks):
            client.execute_command("PING")
    connection = client.connection_pool.get_connection()
    raw = connection._sock
    assert raw is not None
    with measured(url, tasks) as phases["ping on the raw socket"]:
        # The kernel's and Redis's share of a round trip, without redis-py.
        for _ in range(tasks):
            raw.sendall(b"PING\r\n")
            if raw.recv(64) != b"+PONG\r\n":
                raise SystemExit("PING on the raw socket got a split reply")
    client.connection_pool.release(connection)
    client.close()
    return phases


def handoff_variant(tasks: int) -> dict[str, Figures]:
    phases: dict[str, Figures] = {}

    def plain() -> None:
        for _ in range(tasks):
            noop()

    def pool() -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
            futures = [executor.submit(noop) for _ in range(tasks)]
            for future in futures:
                future.result()

    def queues() -> None:
        inbox: queue.Queue[Callable[[], None] | None] = queue.Queue()
        outbox: queue.Queue[None] = queue.Queue()

        def serve() -> None:
            while (function := inbox.get()) is not None:
                outbox.put(function())

        thread = threading.Thread(target=serve)
        thread.start()
        for _ in range(tasks):
            inbox.put(noop)
        for _ in range(tasks):
            outbox.get()
        inbox.put(None)
        thread.join()

    phases["plain call"] = local_figures(tasks, plain)
    phases["ThreadPoolExecutor(4)"] = local_figures(tasks, pool)
    phases["queue.Queue to a thread"] = local_figures(tasks, queues)
    return phases


# Reporting.


def print_phase(variant: str, phase: str, figures: Figures) -> None:
    shown = figures.per_task()
    # The client phases of an overlapping run have no wall time of their own.
    rate = f"{shown['tasks/s']:9.0f}/s, " if figures.wall_s else " " * 12
    other = f", worker {shown['other_cpu_us']:6.1f}" if shown["other_cpu_us"] else ""
    print(
        f"{variant:>16} {phase:>30}: {rate}"
        f"CPU {shown['cpu_us']:6.1f}{other}, Redis {shown['redis_us']:6.1f} us, "
        f"{shown['commands']:5.2f} cmds, {shown['round_trips']:6.3f} RT per task",
        flush=True,
    )
    if figures.polls:
        print(" " * 20 + f"{figures.polls} polls for unfinished runs")
    if figures.breakdown:
        commands = sorted(figures.breakdown.items(), key=lambda item: -item[1])
        print(" " * 20 + ", ".join(f"{name}={count:.2f}" for name, count in commands))


def spread(values: list[float]) -> str:
    return f"{min(values):7.1f} {statistics.median(values):7.1f} {max(values):7.1f}"


def cpu_per_task_us(phases: dict[str, Figures]) -> float:
    """Return the CPU of client, worker and Redis per task, in microseconds.

    The client phases of an overlapping run are parts of its "end to end"
    phase, so only that phase counts there.
    """
    counted = [phases["end to end"]] if "end to end" in phases else phases.values()
    total_s = sum(
        figures.cpu_s + figures.other_cpu_s + figures.redis_cpu_s for figures in counted
    )
    return total_s / next(iter(phases.values())).tasks * 1e6


def print_summary(runs: dict[str, list[dict[str, Figures]]]) -> None:
    """Print min, median and max of each figure, and the implied ceiling."""
    print("\nmin / median / max over the repeats, per task")
    for variant, repeats in runs.items():
        for phase in repeats[0]:
            rows = [repeat[phase].per_task() for repeat in repeats]
            print(f"{variant} / {phase}")
            for key in ("tasks/s", "cpu_us", "other_cpu_us", "redis_us"):
                values = [row[key] for row in rows]
                if any(values):
                    print(f"    {key:>14}: {spread(values)}")
            print(
                f"    {'commands':>14}: {rows[0]['commands']:7.2f}, "
                f"round trips {rows[0]['round_trips']:.3f}"
            )
        if variant.startswith(("streams", "scripts")):
            totals = [cpu_per_task_us(repeat) for repeat in repeats]
            ceilings = [2e6 / total for total in totals]
            print(f"{variant}: all CPU per task, client + worker + Redis")
            print(f"    {'sum CPU us':>14}: {spread(totals)}")
            print(f"    {'2-core ceiling':>14}: {spread(ceilings)} tasks/s")


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument(
        "--batch", type=int, default=100, help="commands per pipeline [100]"
    )
    parser.add_argument(
        "--client-batch",
        type=int,
        help="commands per pipeline of submit and get [--batch]",
    )
    parser.add_argument(
        "--worker-batch",
        type=int,
        help="messages per XREADGROUP and commands per pipeline of the worker "
        "[--batch]",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant")
    parser.add_argument(
        "--variants",
        default="streams,scripts,calls,handoff",
        help="comma-separated variants to run",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="client processes with --overlap, each with its share of the tasks [1]",
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="run the worker in a forked process during submit and get",
    )
    options = parser.parse_args()
    client_batch = options.client_batch or options.batch
    worker_batch = options.worker_batch or options.batch
    runs: dict[str, list[dict[str, Figures]]] = {}
    for repeat in range(options.repeat):
        for variant in options.variants.split(","):
            label = f"{variant} c={client_batch} w={worker_batch}"
            if options.overlap and options.clients > 1:
                label += f" clients={options.clients}"
            if variant == "handoff":
                phases = handoff_variant(options.tasks)
            else:
                with private_redis() as url:
                    if variant == "calls":
                        phases = calls_variant(url, options.tasks, options.batch)
                    elif options.overlap:
                        phases = overlap_variant(
                            variant,
                            url,
                            options.tasks,
                            client_batch,
                            worker_batch,
                            options.clients,
                        )
                    else:
                        phases = queue_variant(
                            variant, url, options.tasks, client_batch, worker_batch
                        )
            runs.setdefault(label, []).append(phases)
            load = os.getloadavg()[0]
            print(f"-- repeat {repeat + 1}, {label}, load {load:.2f}")
            for phase, figures in phases.items():
                print_phase(label, phase, figures)
    print_summary(runs)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nchild CPU (redis-server, workers): {children.ru_utime:.1f} s user")


if __name__ == "__main__":
    main()
