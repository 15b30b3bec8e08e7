"""A one-node run's short script paths write the same state as the long paths.

submit.lua keeps a run of one node in its run hash alone, together with
its graph fields, its node's state fields and its value
(lua/include/single.lua), and claim and complete take shorter paths for
it. Each case runs the same steps on a driver with the scripts as shipped
and on a driver whose submit.lua never keeps a run that way. After every
step it compares every key that each one wrote, once a run kept in one key
is moved to the usual keys in Python. Timestamps, stream entry ids and
sorted-set scores are left out, and expiry is compared as set or not.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from stem import App, chain, group
from stem.canvas import Canvas
from stem.canvas.compiler import compile_canvas
from stem.drivers.redis import RedisDriver
from stem.drivers.redis import scripts as scripts_module
from stem.engine.records import ErrorInfo

TIMEOUT_S = 5.0
ERROR = ErrorInfo("builtins", "RuntimeError", "planned failure")
#: Per script, the text that starts its one-node path and a replacement that
#: switches the path off.
SHORT_PATHS = {
    "submit": (
        '\nif roots ~= "" and roots == node_list',
        '\nif false and roots ~= "" and roots == node_list',
    ),
}
#: The states a one-node run's node went through before each state it can
#: be in while kept in its run hash, as the state-count hash lists them.
PASSED = {
    "queued": ["pending"],
    "running": ["pending", "queued"],
    "succeeded": ["pending", "queued", "running"],
}
TIME_FIELDS = ("created_at", "queued_at", "started_at", "ended_at")

_shipped_source = scripts_module.load_source
_app = App("memory://")
_add = _app.task(name="add")(lambda x, y: x + y)


def _long_path_source(name: str) -> str:
    source = _shipped_source(name)
    if name in SHORT_PATHS:
        start, switched_off = SHORT_PATHS[name]
        assert source.count(start) == 1, f"{name}.lua changed; update SHORT_PATHS"
        source = source.replace(start, switched_off)
    return source


def _state(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Return every key of ``prefix``, its value without times, and its expiry."""
    state: dict[str, Any] = {}
    for key in sorted(client.scan_iter(match=f"*{prefix}*")):
        kind = client.type(key)
        value: Any
        if kind == "hash":
            value = {
                field: "<time>" if field.endswith(TIME_FIELDS) else text
                for field, text in client.hgetall(key).items()
            }
        elif kind == "stream":
            value = [fields for _, fields in client.xrange(key)]
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        else:
            value = client.get(key)
        expires = client.pttl(key) > 0
        state[key.replace(prefix, "<prefix>")] = (kind, value, expires)
    return _expand_single(state)


def _expand_single(state: dict[str, Any]) -> dict[str, Any]:
    """Move each run kept in its run hash to the usual keys, as single.lua does."""
    for key, (kind, fields, expires) in list(state.items()):
        if kind != "hash" or "single" not in fields:
            continue
        node = fields["nodes"]
        run, graph, nodes, values = {}, {}, {}, {}
        for field, text in fields.items():
            if field.startswith("g:"):
                graph[field[2:]] = text
            elif field == node or field.startswith(f"{node}/"):
                nodes[field] = text
            elif field == "value":
                values[node] = text
            elif field != "single":
                run[field] = text
        group = fields["single"][1:]
        counts = {f"{group}/{earlier}": "0" for earlier in PASSED[nodes[node]]}
        counts[f"{group}/{nodes[node]}"] = "1"
        state[key] = (kind, run, expires)
        state[f"{key}:graph"] = (kind, graph, expires)
        state[f"{key}:nodes"] = (kind, nodes, expires)
        state[f"{key}:counts"] = (kind, counts, expires)
        if values:
            state[f"{key}:values"] = (kind, values, expires)
    return dict(sorted(state.items()))


def _next_message(driver: RedisDriver) -> Any:
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    return message


def _run_once(driver: RedisDriver, run_id: str) -> None:
    claim = driver.claim(_next_message(driver))
    assert claim is not None
    driver.complete(claim.message, "2")


def _retry_attempt(driver: RedisDriver, run_id: str) -> None:
    claim = driver.claim(_next_message(driver))
    assert claim is not None
    driver.retry(claim.message, ERROR, 0.0)
    _run_once(driver, run_id)


def _retry_run(driver: RedisDriver, run_id: str) -> None:
    claim = driver.claim(_next_message(driver))
    assert claim is not None
    driver.fail(claim.message, ERROR)
    driver.retry_run(run_id)
    _run_once(driver, run_id)


def _submit_only(driver: RedisDriver, run_id: str) -> None:
    return None


Steps = Callable[[RedisDriver, str], None]
CASES: dict[str, tuple[Canvas, Steps]] = {
    "task": (_add.s(1, 1), _run_once),
    "ignore_result": (_add.s(1, 1).set(ignore_result=True), _run_once),
    "group of one": (group(_add.s(1, 1)), _run_once),
    "second attempt": (_add.s(1, 1), _retry_attempt),
    "failed run retried": (_add.s(1, 1), _retry_run),
    "countdown": (_add.s(1, 1).set(countdown=60), _submit_only),
}


@pytest.mark.parametrize("case", CASES)
def test_one_node_paths_match_long_paths(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    canvas, steps = CASES[case]
    spec = compile_canvas(canvas)
    assert len(spec.nodes) == 1
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    short_prefix = f"test-{uuid.uuid4().hex[:12]}:"
    long_prefix = f"test-{uuid.uuid4().hex[:12]}:"
    short = RedisDriver(redis_url, prefix=short_prefix)
    monkeypatch.setattr(scripts_module, "load_source", _long_path_source)
    long = RedisDriver(redis_url, prefix=long_prefix)
    try:
        for driver in (short, long):
            assert driver.submit("one", spec)
        assert _state(client, short_prefix) == _state(client, long_prefix)
        for driver in (short, long):
            steps(driver, "one")
        assert _state(client, short_prefix) == _state(client, long_prefix)
    finally:
        short.close()
        long.close()
        client.close()


def test_splice_ends_one_node_path(redis_url: str) -> None:
    # A node replaced by a canvas of two steps leaves a run of three nodes.
    # Their claims must read the second step's input, and their completions
    # must keep the state counts of three nodes.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    driver = RedisDriver(redis_url, prefix=prefix)
    try:
        assert driver.submit("one", compile_canvas(_add.s(1, 1)))
        [run_hash] = client.keys(f"{prefix}*run:one")
        assert client.hget(run_hash, "single") == "0-"
        claim = driver.claim(_next_message(driver))
        assert claim is not None
        driver.replace(claim.message, compile_canvas(chain(_add.s(1, 1), _add.s(3))))
        assert client.hget(run_hash, "single") is None
        claims = []
        for value in ("2", "5"):
            claim = driver.claim(_next_message(driver))
            assert claim is not None
            claims.append(claim)
            driver.complete(claim.message, value)
        assert [claim.args for claim in claims] == [[1, 1], [2, 3]]
        snapshot = driver.wait_ended("one", TIMEOUT_S)
        assert snapshot is not None
        assert snapshot.status == "succeeded"
        assert snapshot.value == "5"
        counts = driver.group_counts("one")
        assert sum(counts[None].values()) == 3, counts
    finally:
        driver.close()
        client.close()
