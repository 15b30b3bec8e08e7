"""The layout of a run in Redis hashes, and reading it back.

The scripts never decode JSON that contains user values, so `graph_fields`
flattens the structure they walk (roles, join policies, dependency and
errback lists) into hash fields of plain strings when a run is submitted.
Node ids are dot-separated integers, so comma-separated lists of them are
unambiguous. Values and errors stay opaque JSON text, and `node_records` and
`snapshot_of` build the engine's records from them in Python.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from stem.canvas.errors import StemInternalError
from stem.canvas.spec import (
    GraphSpec,
    NodeId,
    NodeInput,
    NodeSpec,
    SpecText,
    node_order,
    template_nodes,
)
from stem.canvas.values import dumps
from stem.engine import machine

# NOTE: the engine keeps its spec rewrite for splices private. Importing it
# keeps one definition of how a canvas is spliced in.
from stem.engine.machine import spliced_spec
from stem.engine.ports import RunSnapshot
from stem.engine.records import ErrorInfo, NodeRecord, RunState, RunStatus

_RUN_STATUSES: frozenset[str] = frozenset(
    {"running", "succeeded", "failed", "cancelled"}
)


#: Value of each graph hash attribute that `graph_fields` may leave out, and
#: that the scripts read in place of a missing field.
GRAPH_DEFAULTS: dict[str, str] = {
    "role": "task",
    "join": "fail_fast",
    "side": "0",
    "queue": "default",
    "countdown": "0.0",
    "eta": "",
    "ndeps": "0",
    "ncovers": "0",
    "settled": "",
    "triggers": "",
    "dependents": "",
    "errbacks": "",
    "reads": "",
    "group": "",
    "ignore": "0",
    "drops": "",
    "readers": "",
    # Most main-path nodes, such as a fail_fast chord's members, reach a sink.
    "end_role": "reaching",
}


def graph_fields(spec: GraphSpec, *, defaults: bool = True) -> list[str]:
    """Return the run graph hash as a flat field/value list, one entry per attribute.

    With ``defaults=False`` an attribute equal to its `GRAPH_DEFAULTS` value is
    left out, which keeps a chord member to two or three fields. When most
    nodes are sinks (a shard run's members, a group), a run-level
    ``end_role`` field says so once and only the other nodes get
    ``/end_role``. Only a new run may leave fields out: a splice rewrites the
    fields of existing nodes, so it must write every one to replace an older
    value.
    """
    dependents = spec.dependents
    errbacks = spec.errbacks_covering
    readers = spec.readers
    sinks = set(spec.sinks)
    reaching = _reaching_sinks(spec)
    run_end_role = GRAPH_DEFAULTS["end_role"]
    if not defaults and 2 * len(sinks) > len(spec.nodes):
        run_end_role = "sink"
    # Nodes of a large group share their task, options and flags, so the
    # fields that depend on nothing else are built once per shape. The spec
    # keeps every key's options object alive, so its id() is not reused.
    shape_fields: dict[tuple[Any, ...], list[str]] = {}
    flat: list[str] = []
    if run_end_role != GRAPH_DEFAULTS["end_role"]:
        flat += ["end_role", run_end_role]
    for node in spec.nodes:
        node_id = node.id
        shape = (
            node.role,
            node.join,
            node.side,
            node.task,
            id(node.options),
            len(node.deps),
            len(node.covers),
            tuple(node.settled),
            tuple(node.triggers),
        )
        fixed = shape_fields.get(shape)
        if fixed is None:
            fixed = shape_fields[shape] = _shape_fields(node, defaults)
        for name, value in zip(fixed[::2], fixed[1::2], strict=True):
            flat += [f"{node_id}/{name}", value]
        ignore = bool(node.options.ignore_result)
        reads = list(dict.fromkeys(template_nodes(node.input)))
        # The remaining attributes in `GRAPH_DEFAULTS` order, as pairs: a dict
        # per node took a fifth longer for a shard's members.
        dynamic = [
            ("dependents", ",".join(dependents[node_id])),
            ("errbacks", ",".join(errbacks[node_id])),
            ("reads", ",".join(template_nodes(node.input)) if reads else ""),
            ("group", "" if node.group is None else str(node.group)),
            ("ignore", "1" if ignore else "0"),
            # The ignore_result nodes this node reads, and an ignore_result
            # node's readers: the values kept only while a reader is open.
            (
                "drops",
                ",".join(
                    read for read in reads if spec.node(read).options.ignore_result
                )
                if reads
                else "",
            ),
            ("readers", ",".join(readers[node_id]) if ignore else ""),
        ]
        for name, value in dynamic:
            if defaults or value != GRAPH_DEFAULTS[name]:
                flat += [f"{node_id}/{name}", value]
        end_role = _end_role(node_id, sinks, reaching)
        if defaults or end_role != run_end_role:
            flat += [f"{node_id}/end_role", end_role]
    return flat


def _shape_fields(node: NodeSpec, defaults: bool) -> list[str]:
    """Return the graph attributes that depend only on a node's own fields.

    A flat name/value list without the node id, leaving out defaults unless
    ``defaults`` is set, in the order `graph_fields` writes them.
    """
    queue, countdown, eta = _option_fields(node)
    fields = {
        "role": node.role,
        "join": node.join,
        "side": "1" if node.side else "0",
        "queue": queue,
        "task": node.task,
        "countdown": countdown,
        "eta": eta,
        "ndeps": str(len(node.deps)),
        "ncovers": str(len(node.covers)),
        "settled": ",".join(node.settled),
        "triggers": ",".join(node.triggers),
    }
    flat: list[str] = []
    for name, value in fields.items():
        if defaults or GRAPH_DEFAULTS.get(name) != value:
            flat += [name, value]
    return flat


def _end_role(node_id: NodeId, sinks: set[NodeId], reaching: set[NodeId]) -> str:
    """Return what a node's outcome means for the run's end, as graph.lua reads it.

    "sink" for a sink, "reaching" for another node whose failure reaches a
    sink (a candidate for the run's error node), else "none".
    """
    if node_id in sinks:
        return "sink"
    if node_id in reaching:
        return "reaching"
    return "none"


def _option_fields(node: NodeSpec) -> tuple[str, str, str]:
    """Return a node's queue, countdown and eta (epoch seconds) as graph fields."""
    options = node.options
    eta = ""
    if options.eta is not None:
        eta = repr(dt.datetime.fromisoformat(options.eta).timestamp())
    countdown = repr(float(options.countdown or 0.0))
    return options.queue or "default", countdown, eta


def initial_node_fields(nodes: Iterable[NodeSpec]) -> list[str]:
    """Return the node-state fields of nodes that were just added, as a flat list.

    Counters that start at zero are left out: the scripts read a missing
    ``/attempt``, ``/waiting`` or ``/open_covers`` as 0.
    """
    flat: list[str] = []
    for node in nodes:
        flat += [node.id, "pending"]
        if node.deps:
            flat += [f"{node.id}/waiting", str(len(node.deps))]
        if node.covers:
            flat += [f"{node.id}/open_covers", str(len(node.covers))]
    return flat


def initial_counts(nodes: Iterable[NodeSpec]) -> list[str]:
    """Return the state-count hash of nodes that are all pending, as a flat list."""
    counts: dict[str, int] = {}
    for node in nodes:
        group = "-" if node.group is None else str(node.group)
        counts[group] = counts.get(group, 0) + 1
    flat: list[str] = []
    for group, count in counts.items():
        flat += [f"{group}/pending", str(count)]
    return flat


def open_reader_fields(spec: GraphSpec) -> list[str]:
    """Return ``<node>/open_readers`` of every ``ignore_result`` node at submit.

    Every node is pending then, so each reader is open.
    """
    flat: list[str] = []
    for node in spec.nodes:
        if node.options.ignore_result:
            flat += [f"{node.id}/open_readers", str(len(spec.readers[node.id]))]
    return flat


def single_run_hashes(run: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split a one-node run's hash into its node-state and values hashes.

    A run of one node keeps its node's state fields and its value in its run
    hash (lua/include/single.lua). Returns them as the node-state and values
    hashes of a run in the usual keys.
    """
    node = run["nodes"]
    prefix = f"{node}/"
    states = {
        field: text
        for field, text in run.items()
        if field == node or field.startswith(prefix)
    }
    values = {node: run["value"]} if "value" in run else {}
    return states, values


def single_run_counts(single: str, state: str) -> dict[int | None, dict[str, int]]:
    """Return the state counts of a one-node run from its "single" field and state."""
    group = single[1:]
    return {None if group == "-" else int(group): {state: 1}}


def group_counts(fields: dict[str, str]) -> dict[int | None, dict[str, int]]:
    """Read the state-count hash back, leaving out states with no node."""
    counts: dict[int | None, dict[str, int]] = {}
    for field, text in fields.items():
        group, _, state = field.partition("/")
        count = int(text)
        if count:
            key = None if group == "-" else int(group)
            counts.setdefault(key, {})[state] = count
    return counts


def splice_args(
    old: GraphSpec, node_id: NodeId, sub: GraphSpec, version: str
) -> list[str | int | float]:
    """Return the arguments of splice.lua after the message's own, from ARGV[7] on.

    The new spec comes from the engine's own rewrite, so both drivers splice
    the same way. The node-state counters of older nodes change by the
    difference in their dependency and covered-node counts, because the
    replaced node's edge gives way to edges to the canvas's new nodes.
    """
    new = spliced_spec(old, old.node(node_id), sub)
    old_ids = set(old.by_id)
    added = [node for node in new.nodes if node.id not in old_ids]
    graph = graph_fields(new)
    state = initial_node_fields(added)
    deltas: list[str] = []
    for node in new.nodes:
        if node.id not in old_ids:
            continue
        before = old.node(node.id)
        waiting = len(node.deps) - len(before.deps)
        covers = len(node.covers) - len(before.covers)
        if waiting or covers:
            deltas += [node.id, str(waiting), str(covers)]
    return [
        version,
        new.to_json(),
        ",".join(node.id for node in new.nodes),
        ",".join(new.sinks),
        ",".join(nodes_reaching_sinks(new)),
        str(sum(1 for node in added if not node.side)),
        ",".join(old.dependents[node_id]),
        ",".join(old.errbacks_covering[node_id]),
        ",".join(node.id for node in added),
        # Nothing reads the replaced node after the splice, so an
        # ignore_result node keeps no value.
        "" if old.node(node_id).options.ignore_result else dumps(None),
        str(len(graph) // 2),
        str(len(state) // 2),
        *graph,
        *state,
        *deltas,
    ]


def nodes_reaching_sinks(spec: GraphSpec) -> list[NodeId]:
    """Return, in node order, the nodes whose failure reaches a sink.

    The walk is the engine's run-end rule: from each sink back through the
    dependencies of ``fail_fast`` joins, leaving out settled dependencies.
    """
    return sorted(_reaching_sinks(spec), key=node_order)


def _reaching_sinks(spec: GraphSpec) -> set[NodeId]:
    """Return the nodes whose failure reaches a sink, in no order."""
    reaching = set(spec.sinks)
    stack = list(spec.sinks)
    while stack:
        node = spec.node(stack.pop())
        if node.join != "fail_fast":
            continue
        for dep in node.deps:
            if dep not in reaching and dep not in node.settled:
                reaching.add(dep)
                stack.append(dep)
    return reaching


def error_json(error: ErrorInfo) -> str:
    """Encode an error as the JSON text the store keeps."""
    return json.dumps(error.to_dict())


def error_from_json(text: str | None) -> ErrorInfo | None:
    """Decode an error stored by `error_json`; None for a missing or empty field."""
    if not text:
        return None
    data: dict[str, Any] = json.loads(text)
    return ErrorInfo.from_dict(data)


def _float(text: str | None) -> float | None:
    return float(text) if text else None


def node_records(
    spec: GraphSpec,
    fields: dict[str, str],
    values: dict[str, str],
    errors: dict[str, str],
) -> dict[NodeId, NodeRecord]:
    """Build each node's record from the node-state, values and errors hashes."""
    records: dict[NodeId, NodeRecord] = {}
    for node in spec.nodes:
        key = node.id
        state = fields.get(key, "pending")
        records[key] = NodeRecord(
            state=state,  # type: ignore[arg-type]  # written only by the scripts
            attempt=int(fields.get(f"{key}/attempt", "0")),
            lease=int(fields.get(f"{key}/lease", "0")),
            value=values.get(key),
            error=error_from_json(errors.get(key)),
            cause=fields.get(f"{key}/cause") or None,
            replaced=fields.get(f"{key}/replaced") == "1",
            queued_at=_float(fields.get(f"{key}/queued_at")),
            started_at=_float(fields.get(f"{key}/started_at")),
            ended_at=_float(fields.get(f"{key}/ended_at")),
        )
    return records


def snapshot_of(
    run_id: str,
    spec: GraphSpec,
    run: dict[str, str],
    nodes: dict[NodeId, NodeRecord],
) -> RunSnapshot:
    """Build a snapshot from the run hash and the node records.

    The run's value is assembled here from the stored node values, because
    the scripts never decode or concatenate user values.
    """
    status = run.get("status", "")
    if status not in _RUN_STATUSES:
        raise StemInternalError(
            f"Run {run_id} has an invalid status {status!r} in Redis. This is "
            "a bug in Stem, or another program wrote the key."
        )
    typed_status: RunStatus = status  # type: ignore[assignment]  # checked above
    value: str | None = None
    if typed_status == "succeeded":
        value = _stored_run_value(spec, nodes)
        if value is None:
            state = RunState(run_id=run_id, spec=spec, nodes=nodes)
            value = dumps(machine.run_value(state))
    return RunSnapshot(
        run_id=run_id,
        status=typed_status,
        spec=spec,
        nodes=nodes,
        created_at=float(run.get("created_at", "0")),
        ended_at=_float(run.get("ended_at")),
        value=value,
        error_node=run.get("error_node") or None,
        epoch=int(run.get("epoch", "1")),
    )


def _stored_run_value(spec: GraphSpec, nodes: dict[NodeId, NodeRecord]) -> str | None:
    """Return the run's value text when it is one node's stored value as it is.

    That is so when the output is one succeeded node that keeps its value,
    as for a run of one task. The worker stored that text with ``dumps``,
    so it is what ``dumps(machine.run_value(...))`` would give, without
    parsing and writing it again. None means the value must be built.
    """
    output = spec.output
    if not isinstance(output, NodeInput):
        return None
    record = nodes[output.node]
    if record.state != "succeeded":
        return None
    first = spec.nodes[0]
    node = first if first.id == output.node else spec.node(output.node)
    if node.options.ignore_result:
        return None
    return dumps(None) if record.value is None else record.value


def replay_args(run: RunState, node_id: NodeId) -> list[str | int | float]:
    """Return the lists of replay.lua from ARGV[6] on, for reopening a failed node.

    The candidates come from `machine.replay_candidates` on a snapshot. Their
    states are final, so they cannot change before the script runs, and the
    script checks each state again anyway.
    """
    spec = run.spec
    candidates = machine.replay_candidates(run, node_id)
    chosen = {node_id, *candidates}
    args: list[str | int | float] = [
        "1" if spec.node(node_id).side else "0",
        str(len(candidates)),
    ]
    for candidate in candidates:
        node = spec.node(candidate)
        args += [candidate, "1" if node.side else "0", _deps_text(node)]
    dependents = sorted(
        {
            dependent
            for current in chosen
            for dependent in spec.dependents[current]
            if dependent not in chosen
        },
        key=node_order,
    )
    args.append(str(len(dependents)))
    for dependent in dependents:
        args += [dependent, _deps_text(spec.node(dependent))]
    errbacks = sorted(
        {errback for current in chosen for errback in spec.errbacks_covering[current]},
        key=node_order,
    )
    args.append(str(len(errbacks)))
    for errback in errbacks:
        args += [errback, ",".join(spec.node(errback).covers)]
    return args


def _deps_text(node: NodeSpec) -> str:
    """Encode each dependency as ``dep=S`` (any settled end accepted) or ``dep=s``."""
    settled_join = node.join == "all_settled" and node.role != "link"
    return ",".join(
        f"{dep}={'S' if settled_join or dep in node.settled else 's'}"
        for dep in node.deps
    )


#: Full parses after which `SpecParser` cuts a new layout's text even though
#: its last cut matched no text.
_CUT_RETRY_PARSES = 16
#: Layouts whose cut texts a `SpecParser` keeps, the latest first.
_CUTS_KEPT = 4


class SpecParser:
    """Parse run specs, reading only the arguments of texts of known layouts.

    Runs that ``Task.apply_many()`` submits, or that repeat one task with
    other arguments, have texts that differ only in the first node's
    arguments. After two full parses in a row of specs whose first node has
    the same task and whose node counts match, the parser cuts the last
    text's layout (`SpecText`). It then parses each following text of a cut
    layout from its arguments alone. It keeps the cuts of `_CUTS_KEPT`
    layouts. While the latest cut has matched no text, a new one is made
    only after `_CUT_RETRY_PARSES` more full parses, which bounds the cost
    of cutting for runs that never share a layout.

    Threads may share a parser: a race costs a redundant parse or cut only.
    """

    def __init__(self) -> None:
        self._cuts: tuple[SpecText, ...] = ()
        self._latest_hits = 0
        self._last: GraphSpec | None = None
        self._parses_since_cut = 0

    def parse(self, text: str) -> GraphSpec:
        """Parse a spec's JSON text, as `GraphSpec.from_json` does."""
        cuts = self._cuts
        for position, cut in enumerate(cuts):
            spec = cut.read(text)
            if spec is not None:
                if position == 0:
                    self._latest_hits += 1
                return spec
        spec = GraphSpec.from_json(text)
        last, self._last = self._last, spec
        self._parses_since_cut += 1
        if last is not None and _alike(last, spec) and self._may_cut():
            self._cut_text(spec, text)
        return spec

    def _may_cut(self) -> bool:
        return (
            not self._cuts
            or self._latest_hits > 0
            or self._parses_since_cut >= _CUT_RETRY_PARSES
        )

    def _cut_text(self, spec: GraphSpec, text: str) -> None:
        self._parses_since_cut = 0
        try:
            cut = SpecText(spec)
        except ValueError:
            return
        # Keep the cut only if it reads the form this text was written in.
        if cut.read(text) is not None:
            self._cuts = (cut, *self._cuts[: _CUTS_KEPT - 1])
            self._latest_hits = 0


def _alike(first: GraphSpec, second: GraphSpec) -> bool:
    """Tell whether two specs may share a layout: a cheap test, not a proof."""
    return (
        len(first.nodes) == len(second.nodes)
        and bool(first.nodes)
        and first.nodes[0].task == second.nodes[0].task
    )
