"""The operator commands in process (CliRunner) against a private Redis server."""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from xml.etree import ElementTree

import pytest
import redis
from click.testing import CliRunner

from stem import group
from stem.cli import main
from stem.commands.common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_REJECTED,
    EXIT_USAGE,
)
from stem.engine.ports import WorkerBeat

from .conftest import TIMEOUT_S, database_url, load_flows, write_flows

#: A database of the private server that only these tests use.
DATABASE = 11


@pytest.fixture
def flows(tmp_path: Path, redis_url: str) -> Iterator[ModuleType]:
    url = database_url(redis_url, DATABASE)
    module = load_flows(write_flows(tmp_path, url))
    yield module
    module.app.close()


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("STEM_URL", raising=False)
    return CliRunner()


def invoke(runner: CliRunner, flows: ModuleType, *args: str) -> tuple[int, str]:
    result = runner.invoke(main, [*args, "-A", flows.__file__])
    return result.exit_code, result.output


def test_runs_ls_show_and_cancel(runner: CliRunner, flows: ModuleType) -> None:
    with flows.app.worker(concurrency=2):
        done = flows.pipeline().apply_async()
        assert done.get(TIMEOUT_S) == 90
    waiting = flows.add.delay(1, 2)

    code, listed = invoke(runner, flows, "runs", "ls", "--json")
    _, running_only = invoke(runner, flows, "runs", "ls", "--state", "running")
    _, table = invoke(runner, flows, "runs", "ls")
    show_code, shown = invoke(runner, flows, "runs", "show", done.id)
    cancel_code, cancelled = invoke(runner, flows, "runs", "cancel", waiting.id)
    again_code, again = invoke(runner, flows, "runs", "cancel", waiting.id)
    missing_code, missing = invoke(runner, flows, "runs", "show", "no-such-run")

    assert code == 0
    assert [run["run_id"] for run in json.loads(listed)["runs"]] == [
        waiting.id,
        done.id,
    ]
    assert waiting.id in running_only
    assert done.id not in running_only
    assert "✓ succeeded" in table
    assert show_code == 0
    assert "11 ✓ succeeded" in shown
    assert "value     90" in shown
    assert cancel_code == 0
    assert f"Run {waiting.id} cancelled." in cancelled
    assert waiting.state == "cancelled"
    assert again_code == EXIT_REJECTED
    assert "already ended as cancelled" in again
    assert missing_code == EXIT_NOT_FOUND
    assert missing.startswith("Error: Run 'no-such-run' is not found")


def test_runs_ls_pages_with_cursor(runner: CliRunner, flows: ModuleType) -> None:
    ids = [flows.add.delay(i, i).id for i in range(3)]

    _, first = invoke(runner, flows, "runs", "ls", "--limit", "2", "--json")
    cursor = json.loads(first)["cursor"]
    _, second = invoke(runner, flows, "runs", "ls", "--limit", "2", "--cursor", cursor)
    _, hint = invoke(runner, flows, "runs", "ls", "--limit", "2")

    assert [run["run_id"] for run in json.loads(first)["runs"]] == ids[:0:-1]
    assert ids[0] in second
    assert f"More runs: stem runs ls -A {flows.__file__} --limit 2 --cursor" in hint


def test_runs_ls_hint_keeps_filters(runner: CliRunner, flows: ModuleType) -> None:
    # The next-page hint is a command to copy. Without the store and the
    # filters it would list another set of runs.
    finished = [flows.add.delay(i, i) for i in range(3)]
    with flows.app.worker(concurrency=2):
        for result in finished:
            result.get(TIMEOUT_S)
    waiting = flows.add.delay(1, 2)
    filters = ["--state", "succeeded", "--since", "1h", "--limit", "2"]

    _, first = invoke(runner, flows, "runs", "ls", *filters)
    hint = first.splitlines()[-1]
    command = shlex.split(hint.removeprefix("More runs: "))
    second = runner.invoke(main, command[1:])

    assert command[:3] == ["stem", "runs", "ls"]
    assert "-A" in command
    assert "--state" in command
    assert "--limit" in command
    assert second.exit_code == 0
    assert finished[0].id in second.output
    assert waiting.id not in second.output


def test_runs_show_hint_names_store(runner: CliRunner, flows: ModuleType) -> None:
    result = flows.add.delay(1, 2)

    _, by_app = invoke(runner, flows, "runs", "show", result.id)
    by_url = runner.invoke(main, ["runs", "show", result.id, "--url", flows.app.url])

    assert f"stem graph show {result.id} -A {flows.__file__}" in by_app
    assert f"stem graph show {result.id} --url {flows.app.url}" in by_url.output


def test_expired_run_leaves_index(runner: CliRunner, flows: ModuleType) -> None:
    kept = flows.add.delay(1, 1)
    expired = flows.add.delay(2, 2)
    client = redis.Redis.from_url(flows.app.url)
    client.delete(*client.keys(f"*run:{expired.id}*"))

    _, listed = invoke(runner, flows, "runs", "ls", "--json")

    assert [run["run_id"] for run in json.loads(listed)["runs"]] == [kept.id]
    assert client.zrange("{stem:p0}:runs", 0, -1) == [kept.id.encode()]
    client.close()


def test_graph_show_formats(
    runner: CliRunner, flows: ModuleType, tmp_path: Path
) -> None:
    with flows.app.worker(concurrency=2, unknown_task_grace_s=0):
        result = flows.with_extra().apply_async()
        result.get(TIMEOUT_S, propagate=False)
    run_id = result.id

    code, dag = invoke(runner, flows, "graph", "show", run_id)
    _, tree = invoke(runner, flows, "graph", "show", run_id, "--format", "tree")
    _, as_json = invoke(runner, flows, "graph", "show", run_id, "--format", "json")
    _, dot = invoke(runner, flows, "graph", "show", run_id, "--format", "dot")
    _, mermaid = invoke(runner, flows, "graph", "show", run_id, "--format", "mermaid")
    _, why = invoke(runner, flows, "graph", "show", run_id, "--why", "4")
    _, watched = invoke(runner, flows, "graph", "show", run_id, "--watch")
    out = tmp_path / "run.mmd"
    _, _ = invoke(
        runner, flows, "graph", "show", run_id, "--format", "mermaid", "-o", str(out)
    )
    missing_code, _ = invoke(runner, flows, "graph", "show", run_id, "--why", "99")

    assert code == 0
    assert "✗  3  extra" in dag
    assert "⊘  4  add" in dag
    assert "legend:" in dag
    assert "\x1b[" not in dag
    assert max(len(line) for line in dag.splitlines()) <= 80
    assert "extra" in tree
    assert {node["id"] for node in json.loads(as_json)["nodes"]} >= {"0", "3", "4"}
    assert dot.startswith("digraph")
    assert mermaid.startswith("flowchart")
    assert "Node 3 (extra) failed: DeadLettered" in " ".join(why.split())
    assert watched.count("legend:") == 1
    assert out.read_text(encoding="utf-8") == mermaid
    assert missing_code == EXIT_NOT_FOUND


def test_graph_show_writes_svg(
    runner: CliRunner, flows: ModuleType, tmp_path: Path
) -> None:
    with flows.app.worker(concurrency=2, unknown_task_grace_s=0):
        result = flows.with_extra().apply_async()
        result.get(TIMEOUT_S, propagate=False)
    out = tmp_path / "run.svg"

    code, output = invoke(
        runner, flows, "graph", "show", result.id, "--format", "svg", "-o", str(out)
    )

    assert code == 0, output
    assert f"Wrote svg of run {result.id} to {out}." in output
    # Raises ParseError unless the file is well-formed XML.
    root = ElementTree.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = " ".join(element.text or "" for element in root.iter())
    assert f"run {result.id}: failed" in texts
    assert "extra" in texts
    assert "failed" in texts


def test_graph_show_missing_folder_rejected(
    runner: CliRunner, flows: ModuleType, tmp_path: Path
) -> None:
    result = flows.add.delay(1, 2)
    out = tmp_path / "missing" / "run.svg"

    code, output = invoke(
        runner, flows, "graph", "show", result.id, "--format", "svg", "-o", str(out)
    )

    assert code == EXIT_USAGE, output
    assert f"Writing {out} failed" in output
    assert "Traceback" not in output


def test_graph_show_collapses_and_expands(runner: CliRunner, flows: ModuleType) -> None:
    result = flows.pipeline(20).apply_async()

    _, collapsed = invoke(runner, flows, "graph", "show", result.id)
    _, expanded = invoke(runner, flows, "graph", "show", result.id, "--expand")
    _, why = invoke(runner, flows, "graph", "show", result.id, "--why", "20")
    _, queued = invoke(runner, flows, "graph", "show", result.id, "--why", "0")

    assert "add \N{MULTIPLICATION SIGN}20  20 ◷" in collapsed
    assert "\N{MULTIPLICATION SIGN}20" not in expanded
    assert "waits for 20 of its 20 dependencies" in " ".join(why.split())
    assert "0 live workers read that queue" in " ".join(queued.split())


def test_queues_ls_and_purge(
    runner: CliRunner, flows: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = flows.pipeline(5).apply_async()
    cancelled = flows.add.delay(1, 2)
    cancelled.cancel()
    caplog.set_level(logging.WARNING)

    _, before = invoke(runner, flows, "queues", "ls", "--json")
    code, purged = invoke(runner, flows, "queues", "purge", "default", "--force")
    _, after = invoke(runner, flows, "queues", "ls")

    assert json.loads(before)["queues"] == [
        {"name": "default", "ready": 6, "unacked": 0}
    ]
    assert code == 0
    assert purged.count("Purged") == 1
    assert caplog.records == []
    assert "Purged 6 messages of 2 runs from queue default." in purged
    # Only the run that is still running needs a cancel.
    assert f"stem runs cancel {stuck.id} -A {flows.__file__}" in purged
    assert cancelled.id not in purged
    assert "default      0        0" in after


def test_dlq_ls_show_replay_purge(runner: CliRunner, flows: ModuleType) -> None:
    with flows.app.worker(concurrency=1, unknown_task_grace_s=0):
        result = flows.with_extra().apply_async()
        result.get(TIMEOUT_S, propagate=False)
        _, listed = invoke(runner, flows, "dlq", "ls", "--json")
        [dead] = json.loads(listed)["dead_letters"]
        _, shown = invoke(runner, flows, "dlq", "show", dead["id"])
        flows.app.task(name="extra")(lambda values: len(values))
        code, replayed = invoke(runner, flows, "dlq", "replay", dead["id"])
        assert result.get(TIMEOUT_S) == 103
    again_code, again = invoke(runner, flows, "dlq", "replay", dead["id"])
    purge_code, purged = invoke(runner, flows, "dlq", "purge", "--all", "-f")

    assert dead["node"] == "3"
    assert dead["task"] == "extra"
    assert "not registered" in shown
    assert code == 0
    assert f"node 3 of run {result.id} is queued again" in replayed
    assert again_code == EXIT_NOT_FOUND
    assert "No dead letter has id" in again
    assert purge_code == 0
    assert "Purged 0 dead letters." in purged


def test_inspect_lists_live_workers(runner: CliRunner, flows: ModuleType) -> None:
    with flows.app.worker(concurrency=3, name="inspected"):
        code, table = invoke(runner, flows, "inspect")
        _, as_json = invoke(runner, flows, "inspect", "--json")
    none_code, none = invoke(runner, flows, "inspect")

    [beat] = json.loads(as_json)["workers"]
    assert code == 0
    assert "inspected" in table
    assert "0/3 threads" in table
    assert beat["name"] == "inspected"
    assert beat["concurrency"] == 3
    assert none_code == EXIT_FAILED
    assert "No worker is alive" in none


def test_expired_runs_do_not_hide_others(flows: ModuleType) -> None:
    driver = flows.app.driver
    ids = [flows.add.delay(i, i).id for i in range(250)]
    client = redis.Redis.from_url(flows.app.url)
    # Expire every other run among the newest 200, the first batch read.
    for run_id in ids[50::2]:
        client.delete(*client.keys(f"*run:{run_id}*"))
    client.close()

    page = driver.list_runs(limit=1000)

    expected = ids[:50] + ids[51::2]
    assert sorted(run.run_id for run in page.runs) == sorted(expected)
    assert page.cursor is None


def test_long_run_id_kept_whole(runner: CliRunner, flows: ModuleType) -> None:
    # A beat run id has spaces and is longer than a ULID. At 80 columns the
    # table keeps it whole, and the hint of runs show quotes it for the shell.
    run_id = "beat:chain every 5 s:2026-12-04T20:48:45Z"
    flows.add.apply_async((1, 2), run_id=run_id)
    env = {"COLUMNS": "80"}

    table = runner.invoke(main, ["runs", "ls", "-A", flows.__file__], env=env)
    shown = runner.invoke(main, ["runs", "show", run_id, "-A", flows.__file__], env=env)

    assert run_id in table.output
    assert f"See the graph: stem graph show '{run_id}'" in shown.output


def test_missing_run_names_store(runner: CliRunner, flows: ModuleType) -> None:
    code, output = invoke(runner, flows, "runs", "show", "no-such-run")

    assert code == EXIT_NOT_FOUND
    assert f"is not found in <RedisDriver {flows.app.url} prefix" in output


def _raise_escapes() -> None:
    raise ValueError("\x1b[2J\x1b]0;title\x07 cleared \u202e")


def test_task_text_reaches_terminal_escaped(
    runner: CliRunner, flows: ModuleType
) -> None:
    hostile = flows.app.task(name="hostile")(_raise_escapes)
    with flows.app.worker(concurrency=1):
        failed = hostile.delay()
        valued = flows.add.delay("\x1b[31m", "\u202e")
        with pytest.raises(ValueError, match="cleared"):
            failed.get(TIMEOUT_S)
        assert valued.get(TIMEOUT_S) == "\x1b[31m\u202e"
    outputs = [
        invoke(runner, flows, "runs", "show", failed.id)[1],
        invoke(runner, flows, "runs", "show", valued.id)[1],
        invoke(runner, flows, "graph", "show", failed.id, "--why", "0")[1],
        invoke(runner, flows, "graph", "show", failed.id)[1],
        invoke(runner, flows, "graph", "show", failed.id, "--format", "tree")[1],
        invoke(runner, flows, "runs", "show", failed.id, "--json")[1],
        invoke(runner, flows, "runs", "show", valued.id, "--json")[1],
    ]
    for output in outputs:
        for char in "\x1b\x07\u202e":
            assert char not in output
    assert "\\x1b[2J" in outputs[0]


def test_dlq_lists_hand_written_entry(runner: CliRunner, flows: ModuleType) -> None:
    dead = flows.app.driver._keys.first.dead
    client = redis.Redis.from_url(flows.app.url)
    try:
        client.xadd(dead, {"foo": "bar"})
        client.xadd(dead, {"run": "r", "node": "0", "attempt": "x", "reason": "hi"})
        # str.isdigit() accepts "²", but int() does not parse it.
        client.xadd(dead, {"run": "s", "node": "0", "attempt": "²", "epoch": "1"})
    finally:
        client.close()

    code, listed = invoke(runner, flows, "dlq", "ls", "--json")

    assert code == 0
    entries = json.loads(listed)["dead_letters"]
    assert [(entry["run"], entry["attempt"]) for entry in entries] == [
        ("", 0),
        ("r", 0),
        ("s", 0),
    ]
    assert entries[2]["epoch"] == 1
    replay_code, replayed = invoke(runner, flows, "dlq", "replay", entries[0]["id"])
    assert replay_code == EXIT_NOT_FOUND
    assert f"Dead letter {entries[0]['id']} names no run" in replayed
    assert "purge the dead letter" in replayed


@pytest.mark.parametrize("dead_id", ["²/1-0", "9/1-0", "0/x", "x"])
def test_dlq_unknown_id_not_found(
    runner: CliRunner, flows: ModuleType, dead_id: str
) -> None:
    for command in ("show", "replay"):
        code, output = invoke(runner, flows, "dlq", command, dead_id)

        assert code == EXIT_NOT_FOUND, output
        assert f"No dead letter has id {dead_id}" in output


def test_dlq_ls_hint_keeps_store(runner: CliRunner, flows: ModuleType) -> None:
    dead = flows.app.driver._keys.first.dead
    client = redis.Redis.from_url(flows.app.url)
    try:
        ids = [
            client.xadd(dead, {"run": f"r{i}", "node": "0", "reason": "hi"}).decode()
            for i in range(3)
        ]
    finally:
        client.close()

    _, first = invoke(runner, flows, "dlq", "ls", "--limit", "2")
    hint = first.splitlines()[-1]
    command = shlex.split(hint.removeprefix("More: "))
    second = runner.invoke(main, command[1:])

    assert command[:5] == ["stem", "dlq", "ls", "-A", flows.__file__]
    assert second.exit_code == 0
    assert f"0/{ids[2]}" in second.output
    assert f"0/{ids[0]}" not in second.output


def test_runs_show_prints_epoch(runner: CliRunner, flows: ModuleType) -> None:
    with flows.app.worker(concurrency=1, unknown_task_grace_s=0):
        result = flows.with_extra().apply_async()
        result.get(TIMEOUT_S, propagate=False)
        result.retry()
        result.get(TIMEOUT_S, propagate=False)

    code, as_json = invoke(runner, flows, "runs", "show", result.id, "--json")
    _, human = invoke(runner, flows, "runs", "show", result.id)

    assert code == 0
    assert json.loads(as_json)["epoch"] == 2
    assert "  epoch     2" in human


def test_graph_watch_exit_codes(runner: CliRunner, flows: ModuleType) -> None:
    with flows.app.worker(concurrency=2, unknown_task_grace_s=0):
        failed = flows.with_extra().apply_async()
        failed.get(TIMEOUT_S, propagate=False)
        succeeded = flows.pipeline(3).apply_async()
        succeeded.get(TIMEOUT_S)
    cancelled = flows.add.delay(1, 2)
    cancelled.cancel()

    failed_code, failed_out = invoke(
        runner, flows, "graph", "show", failed.id, "--watch"
    )
    cancelled_code, _ = invoke(runner, flows, "graph", "show", cancelled.id, "--watch")
    ok_code, _ = invoke(runner, flows, "graph", "show", succeeded.id, "--watch")
    drawn_code, _ = invoke(runner, flows, "graph", "show", failed.id)

    assert failed_code == EXIT_FAILED, failed_out
    assert f"run {failed.id}: failed" in failed_out
    assert cancelled_code == EXIT_FAILED
    assert ok_code == 0
    # Without --watch the command only draws, so the run's outcome is no error.
    assert drawn_code == 0


def test_dlq_reason_escaped(runner: CliRunner, flows: ModuleType) -> None:
    dead = flows.app.driver._keys.first.dead
    reason = "\x1b[2J[bold]gone[/bold] \u202e"
    client = redis.Redis.from_url(flows.app.url)
    try:
        client.xadd(dead, {"run": "r", "node": "0", "attempt": "1", "reason": reason})
    finally:
        client.close()

    _, listed = invoke(runner, flows, "dlq", "ls")
    _, as_json = invoke(runner, flows, "dlq", "ls", "--json")
    [entry] = json.loads(as_json)["dead_letters"]
    _, shown = invoke(runner, flows, "dlq", "show", entry["id"])

    for output in (listed, shown):
        assert "\x1b" not in output
        assert "\u202e" not in output
        assert "[bold]gone" in " ".join(output.split())
    assert entry["reason"] == reason


def test_markup_in_names_printed_as_text(runner: CliRunner, flows: ModuleType) -> None:
    # Run ids and queue names may contain brackets, which rich reads as markup.
    run_id = "[/]run[bold]"
    flows.add.s(1, 2).set(queue="[/]q").apply_async(run_id=run_id)
    beat = WorkerBeat(
        name="[/]worker",
        host="[red]host",
        pid=1,
        queues=["[/]q"],
        concurrency=1,
        pool="threads",
        in_flight=0,
        processed=0,
        failed=0,
        started_at=time.time(),
        last_seen=time.time(),
    )
    flows.app.driver.heartbeat(beat, 60.0)

    runs_code, runs_out = invoke(runner, flows, "runs", "ls")
    queues_code, queues_out = invoke(runner, flows, "queues", "ls")
    inspect_code, inspect_out = invoke(runner, flows, "inspect")

    assert runs_code == 0, runs_out
    assert run_id in runs_out
    assert queues_code == 0, queues_out
    assert "[/]q" in queues_out
    assert inspect_code == 0, inspect_out
    assert "[/]worker" in inspect_out
    assert "[red]host" in inspect_out


def test_runs_show_keeps_numbers_whole(runner: CliRunner, flows: ModuleType) -> None:
    # At 80 columns, a list value wraps between its items, never inside one.
    short_numbers = [i * 12345 for i in range(30)]
    long_numbers = [i * 1234567 for i in range(60)]
    with flows.app.worker(concurrency=2):
        short = group(flows.add.s(n, 0) for n in short_numbers).apply_async()
        assert short.get(TIMEOUT_S) == short_numbers
        cut = group(flows.add.s(n, 0) for n in long_numbers).apply_async()
        assert cut.get(TIMEOUT_S) == long_numbers

    code, short_output = invoke(runner, flows, "runs", "show", short.id)
    _, cut_output = invoke(runner, flows, "runs", "show", cut.id)
    value = short_output.split("  value", 1)[1].split("See the graph")[0]
    cut_value = cut_output.split("  value", 1)[1].split("See the graph")[0]
    # A line break inside a number would read as two numbers here.
    cut_numbers = [int(item) for item in re.findall(r"\d+", cut_value)]

    assert code == 0
    assert [int(item) for item in re.findall(r"\d+", value)] == short_numbers
    # A value longer than the cut ends after a whole item.
    assert cut_value.rstrip().endswith(", ...")
    assert cut_numbers == long_numbers[: len(cut_numbers)]
    assert len(cut_numbers) < len(long_numbers)


def test_dlq_ls_fits_80_columns(runner: CliRunner, flows: ModuleType) -> None:
    # The reason goes on its own line under the ids, cut to the width,
    # instead of a narrow last column that wraps a word per line.
    with flows.app.worker(concurrency=1, unknown_task_grace_s=0):
        result = flows.with_extra().apply_async()
        result.get(TIMEOUT_S, propagate=False)

    listed = runner.invoke(
        main, ["dlq", "ls", "-A", flows.__file__], env={"COLUMNS": "80"}
    )
    lines = listed.output.splitlines()

    assert listed.exit_code == 0, listed.output
    assert len(lines) == 3, listed.output
    assert lines[0].split() == ["id", "run", "node", "task"]
    assert lines[1].split()[1:] == [result.id, "3", "extra"]
    assert lines[2].startswith("  Task 'extra' is not registered with <App ")
    assert lines[2].endswith("\N{HORIZONTAL ELLIPSIS}")
    assert max(len(line) for line in lines) <= 80
