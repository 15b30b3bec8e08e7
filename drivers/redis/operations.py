"""The Redis side of the operator commands: runs index, queues, dead letters, workers.

`RedisOperations` is a base of `stem.drivers.redis.RedisDriver` and
implements the engine's `stem.engine.ports.Operations` port: the runs index,
queue lengths and purges, the dead-letter streams and worker heartbeats.
Every partition has its own runs index, queue streams and dead-letter
stream, so listings read each partition and merge the results. Each listing
costs a bounded number of round trips per page and partition.

A dead letter's id is ``<partition>/<entry>``: the partition's position in
the stored partition list and the id of the entry in that partition's
dead-letter stream, such as ``0/1733338102345-0``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import redis
from redis.cluster import RedisCluster

from stem.drivers.redis import layout
from stem.drivers.redis.keys import Keys, KeySpace
from stem.drivers.redis.scripts import Reply, Scripts, check_reply
from stem.engine.errors import DriverError
from stem.engine.ports import (
    TASK_HEADER,
    DeadLetter,
    Message,
    PurgedQueue,
    QueueStats,
    RunPage,
    RunSnapshot,
    RunSummary,
    WorkerBeat,
)
from stem.engine.records import RunState

log = logging.getLogger(__name__)

#: Index entries read per round trip while a listing filters runs.
_RUNS_BATCH = 200
#: Queue entries one call of purge.lua deletes, so no call blocks Redis long.
_PURGE_BATCH = 1000
#: Times `replay_dead_letter` recomputes its lists when a splice changed the run.
_REPLAY_ATTEMPTS = 5


class RedisOperations:
    """The `Operations` port over the keys of every partition."""

    _client: redis.Redis | RedisCluster
    _keys: KeySpace
    _scripts: Scripts
    _group: str

    def snapshot(self, run_id: str) -> RunSnapshot:
        raise NotImplementedError  # pragma: no cover - RedisDriver defines it

    # -- runs -----------------------------------------------------------------

    def list_runs(
        self,
        *,
        statuses: Sequence[str] = (),
        created_after: float | None = None,
        created_before: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        if limit < 1:
            raise ValueError(f"Page size {limit} is invalid; pass 1 or more.")
        last = _split_cursor(cursor)
        found: list[tuple[float, str, RunSummary]] = []
        more = False
        for partition in self._keys.partitions:
            entries = self._partition_runs(
                partition, statuses, created_after, created_before, limit, last
            )
            found += entries
            # A partition that filled a page may hold more runs.
            more = more or len(entries) == limit
        # Newest first, and runs created at the same time by id, descending,
        # as ZREVRANGEBYSCORE orders them within a partition.
        found.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
        page = found[:limit]
        if not page or not (more or len(found) > limit):
            return RunPage([summary for _, _, summary in page], None)
        score, run_id, _ = page[-1]
        return RunPage([summary for _, _, summary in page], f"{score!r}|{run_id}")

    def _partition_runs(
        self,
        partition: Keys,
        statuses: Sequence[str],
        created_after: float | None,
        created_before: float | None,
        limit: int,
        last: tuple[float, str] | None,
    ) -> list[tuple[float, str, RunSummary]]:
        """Return up to ``limit`` runs of one partition after the cursor ``last``.

        Each entry is the index score, the run id and the run's summary.
        """
        top = "+inf" if created_before is None else f"({created_before!r}"
        bottom = "-inf" if created_after is None else repr(created_after)
        if last is not None:
            top = repr(last[0])
        found: list[tuple[float, str, RunSummary]] = []
        offset = 0
        while True:
            with self._errors("read the runs index"):
                batch: Any = self._client.zrevrangebyscore(
                    partition.runs,
                    top,
                    bottom,
                    start=offset,
                    num=_RUNS_BATCH,
                    withscores=True,
                )
            offset += len(batch)
            # Entries that share the cursor's score sort by id, descending,
            # and those at or above the cursor's id were on earlier pages.
            fresh = [
                (run_id, score)
                for run_id, score in batch
                if last is None or score != last[0] or run_id < last[1]
            ]
            summaries = self._summaries(partition, [run_id for run_id, _ in fresh])
            # Missing runs were removed from the index, so later entries moved up.
            offset -= summaries.count(None)
            for summary, (run_id, score) in zip(summaries, fresh, strict=True):
                if summary is None or (statuses and summary.status not in statuses):
                    continue
                found.append((float(score), run_id, summary))
                if len(found) == limit:
                    return found
            if len(batch) < _RUNS_BATCH:
                return found

    def _summaries(
        self, partition: Keys, run_ids: list[str]
    ) -> list[RunSummary | None]:
        """Read each run's status and times; None for a run that no longer exists.

        The index entries of missing runs are removed, because their runs
        expired or were deleted.
        """
        if not run_ids:
            return []
        with self._errors("read run statuses"):
            pipe = self._client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.hmget(
                    partition.run(run_id).run, "status", "created_at", "ended_at"
                )
            replies: list[Any] = pipe.execute()
        summaries: list[RunSummary | None] = []
        missing: list[str] = []
        for run_id, (status, created_at, ended_at) in zip(
            run_ids, replies, strict=True
        ):
            if status is None:
                missing.append(run_id)
                summaries.append(None)
                continue
            summaries.append(
                RunSummary(
                    run_id,
                    status,
                    float(created_at or 0),
                    float(ended_at) if ended_at else None,
                )
            )
        if missing:
            with self._errors("remove expired runs from the runs index"):
                self._client.zrem(partition.runs, *missing)
            log.debug("Removed %d expired runs from the runs index.", len(missing))
        return summaries

    # -- queues ---------------------------------------------------------------

    def queue_stats(self) -> list[QueueStats]:
        names: set[str] = set()
        for partition in self._keys.partitions:
            with self._errors("list the queues"):
                found: Any = self._client.smembers(partition.queues)
            names |= set(found)
        # Workers create the streams of the queues they read, even empty ones.
        read = {queue for beat in self.workers() for queue in beat.queues}
        queues = sorted(names | read)
        ready = dict.fromkeys(queues, 0)
        unacked = dict.fromkeys(queues, 0)
        for partition in self._keys.partitions:
            with self._errors("read the queue lengths"):
                pipe = self._client.pipeline(transaction=False)
                for name in queues:
                    pipe.xlen(partition.queue(name))
                    pipe.xinfo_groups(partition.queue(name))
                # XINFO GROUPS fails for a stream that does not exist yet.
                replies: list[Any] = pipe.execute(raise_on_error=False)
            for index, name in enumerate(queues):
                length, groups = replies[2 * index], replies[2 * index + 1]
                if isinstance(length, Exception):
                    raise DriverError(
                        f"Redis failed to read the length of {partition.queue(name)} "
                        f"at {self}: {length}"
                    )
                if isinstance(groups, redis.ResponseError):
                    groups = []
                pending = sum(
                    int(group["pending"])
                    for group in groups
                    if group["name"] == self._group
                )
                # Acknowledged entries are deleted, so the stream contains the
                # undelivered entries and the unacknowledged ones only.
                ready[name] += int(length) - pending
                unacked[name] += pending
        return [QueueStats(name, ready[name], unacked[name]) for name in queues]

    def delayed_count(self) -> int:
        with self._errors("count the delayed messages"):
            return sum(
                int(self._client.zcard(partition.delayed))
                for partition in self._keys.partitions
            )

    def purge_queue(self, name: str) -> PurgedQueue:
        total = 0
        # A dict keeps each run id once, in the order first deleted.
        run_ids: dict[str, None] = {}
        for partition in self._keys.partitions:
            stream = partition.queue(name)
            while True:
                reply: Any = self._scripts.call(
                    "purge", [stream], [self._group, _PURGE_BATCH]
                )
                deleted = int(reply[0])
                total += deleted
                run_ids.update(dict.fromkeys(str(item) for item in reply[1:]))
                if deleted < _PURGE_BATCH:
                    break
        if total:
            # INFO, because the caller gets the count back. `stem queues purge`
            # prints it, so a warning would print it a second time there.
            noun = "message" if total == 1 else "messages"
            log.info("Purged %d %s from queue %s.", total, noun, name)
        return PurgedQueue(total, list(run_ids))

    # -- dead letters ---------------------------------------------------------

    def list_dead_letters(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[DeadLetter], str | None]:
        if limit < 1:
            raise ValueError(f"Page size {limit} is invalid; pass 1 or more.")
        after = None
        if cursor is not None:
            after = self._dead_location(cursor)
            if after is None:
                raise ValueError(
                    f"Cursor {cursor!r} is invalid; pass the cursor a previous "
                    "page returned."
                )
        found: list[tuple[tuple[int, int], int, DeadLetter]] = []
        for index, partition in enumerate(self._keys.partitions):
            # Dead letters sort by entry id, then by partition position, so an
            # entry with the cursor's id is still to come in a later partition.
            start = "-"
            if after is not None:
                after_index, after_entry = after
                start = after_entry if index > after_index else f"({after_entry}"
            with self._errors("read the dead-letter stream"):
                entries: Any = self._client.xrange(
                    partition.dead, start, "+", count=limit + 1
                )
            for entry_id, fields in entries:
                dead = _dead_letter(f"{index}/{entry_id}", entry_id, fields)
                found.append((_entry_order(entry_id), index, dead))
        found.sort(key=lambda item: (item[0], item[1]))
        page = [dead for _, _, dead in found[:limit]]
        more = len(found) > limit
        return page, page[-1].id if more else None

    def get_dead_letter(self, dead_id: str) -> DeadLetter | None:
        location = self._dead_location(dead_id)
        if location is None:
            return None
        index, entry = location
        with self._errors(f"read dead letter {dead_id}"):
            try:
                entries: Any = self._client.xrange(
                    self._keys.partitions[index].dead, entry, entry
                )
            except redis.ResponseError:
                # Not a stream id at all, so no entry can have it.
                return None
        if not entries:
            return None
        entry_id, fields = entries[0]
        return _dead_letter(dead_id, entry_id, fields)

    def replay_dead_letter(self, dead_id: str) -> str:
        dead = self.get_dead_letter(dead_id)
        location = self._dead_location(dead_id)
        if dead is None or location is None:
            return "not_found"
        index, entry = location
        message = dead.message
        partition = self._keys.partitions[index]
        if partition != self._keys.partition_of(message.run_id):
            # Scripts write a dead letter to its run's partition, so the run is
            # not in this one, and another program wrote the entry.
            return "run_not_found"
        run_keys = partition.run(message.run_id)
        with self._errors(f"read run {message.run_id}"):
            home: Any = self._client.hget(run_keys.run, "home")
        if home is not None:
            # Its home run would ignore the shard's new outcome.
            return "in_shard"
        keys = [
            *run_keys.all(),
            partition.delayed,
            partition.dead,
            run_keys.counts,
            partition.events,
        ]
        for _ in range(_REPLAY_ATTEMPTS):
            try:
                snapshot = self.snapshot(message.run_id)
            except LookupError:
                return "run_not_found"
            with self._errors(f"read the spec version of run {message.run_id}"):
                version: Any = self._client.hget(keys[0], "spec_version")
            run = RunState(
                message.run_id, snapshot.spec, snapshot.nodes, epoch=snapshot.epoch
            )
            if message.node_id not in snapshot.spec.by_id:
                return "not_failed"
            args: list[str | int | float] = [
                entry,
                str(version),
                message.run_id,
                message.node_id,
                str(message.attempt),
                str(message.epoch),
                *layout.replay_args(run, message.node_id),
            ]
            reply = self._scripts.call(
                "replay", keys, args, run_id=message.run_id, node_id=message.node_id
            )
            result = check_reply(
                "replay",
                reply,
                message.run_id,
                message.node_id,
                accept=frozenset(Reply),
            )
            if result is Reply.CONFLICT:
                continue
            if result is Reply.DONE:
                log.info("Replayed dead letter %s of run %s.", dead.id, message.run_id)
                return "replayed"
            if result is Reply.DUPLICATE:
                return "not_found"
            if result is Reply.RUN_NOT_FOUND:
                return "run_not_found"
            return str(reply[1])
        raise DriverError(
            f"Replaying dead letter {dead_id} failed: the graph of run "
            f"{message.run_id} changed {_REPLAY_ATTEMPTS} times meanwhile. Try again."
        )

    def purge_dead_letters(self, dead_ids: Sequence[str] | None = None) -> int:
        if dead_ids is None:
            total = 0
            for partition in self._keys.partitions:
                with self._errors("purge the dead-letter stream"):
                    pipe = self._client.pipeline(transaction=True)
                    pipe.xlen(partition.dead)
                    pipe.delete(partition.dead)
                    count, _ = pipe.execute()
                total += int(count)
            return total
        chosen: dict[int, list[str]] = {}
        for dead_id in dead_ids:
            location = self._dead_location(dead_id)
            if location is not None:
                chosen.setdefault(location[0], []).append(location[1])
        total = 0
        for index, entries in chosen.items():
            with self._errors("purge the dead-letter stream"):
                try:
                    total += int(
                        self._client.xdel(self._keys.partitions[index].dead, *entries)
                    )
                except redis.ResponseError:
                    # One of them is not a stream id, so delete one by one.
                    for entry in entries:
                        with contextlib.suppress(redis.ResponseError):
                            total += int(
                                self._client.xdel(
                                    self._keys.partitions[index].dead, entry
                                )
                            )
        return total

    def _dead_location(self, dead_id: str) -> tuple[int, str] | None:
        """Return the partition position and entry id of a dead letter's id.

        None for an id that no dead letter can have.
        """
        number, slash, entry = dead_id.partition("/")
        valid = number.isascii() and number.isdigit()
        if not slash or not valid or not entry:
            return None
        index = int(number)
        if index >= len(self._keys.partitions):
            return None
        return index, entry

    # -- worker heartbeats ----------------------------------------------------

    def heartbeat(self, beat: WorkerBeat, ttl_s: float) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        with self._errors(f"record the heartbeat of worker {beat.name}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._keys.worker(beat.name), json.dumps(asdict(beat)), px=ttl_ms)
            pipe.zadd(self._keys.workers, {beat.name: beat.last_seen})
            pipe.execute()

    def forget_worker(self, name: str) -> None:
        with self._errors(f"remove the heartbeat of worker {name}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._keys.worker(name))
            pipe.zrem(self._keys.workers, name)
            pipe.execute()

    def workers(self) -> list[WorkerBeat]:
        with self._errors("read the worker heartbeats"):
            names: Any = self._client.zrange(self._keys.workers, 0, -1)
            texts: Any = (
                self._client.mget([self._keys.worker(name) for name in names])
                if names
                else []
            )
        beats: list[WorkerBeat] = []
        expired: list[str] = []
        for name, text in zip(names, texts, strict=True):
            if text is None:
                expired.append(name)
            else:
                beats.append(WorkerBeat(**json.loads(text)))
        if expired:
            with self._errors("remove expired worker heartbeats"):
                self._client.zrem(self._keys.workers, *expired)
        return sorted(beats, key=lambda beat: beat.name)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as err:
            raise DriverError(f"Redis failed to {action} at {self}: {err}") from err


def _split_cursor(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    score, _, run_id = cursor.partition("|")
    try:
        position = float(score)
    except ValueError:
        position = math.nan
    # A page's cursor is a run's creation time, which is always finite.
    if not math.isfinite(position):
        raise ValueError(
            f"Cursor {cursor!r} is invalid; pass the cursor a previous page returned."
        )
    return position, run_id


def _entry_order(entry_id: str) -> tuple[int, int]:
    """Return a stream entry id as numbers, in the order Redis sorts them."""
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def _dead_letter(dead_id: str, entry_id: str, fields: dict[str, Any]) -> DeadLetter:
    # Another program may have written the entry, so a missing field reads
    # as empty and a bad number as 0, and listing the stream still works.
    def number(name: str) -> int:
        text = str(fields.get(name, ""))
        # isdigit() alone passes digits such as "²", which int() rejects.
        return int(text) if text.isascii() and text.isdigit() else 0

    message = Message(
        str(fields.get("run", "")),
        str(fields.get("node", "")),
        number("attempt"),
        str(fields.get("queue", "")),
        number("epoch"),
        entry_id,
        {TASK_HEADER: fields.get("task", "")},
    )
    # A stream id starts with the milliseconds at which it was added.
    dead_at = int(entry_id.partition("-")[0]) / 1000
    return DeadLetter(dead_id, message, str(fields.get("reason", "")), dead_at)
