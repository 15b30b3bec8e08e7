"""Cut large chord headers into shards: a pure rewrite of a graph spec.

A chord header (the group whose members a callback joins) with more than
``shard_size`` members is cut into shards of whole members. Each shard
becomes a run of its own, ``<run>~s<node>``, that contains its members with
their node ids unchanged, plus one placeholder per node outside the header
that the members read (the header's input). In the home run the header is
replaced by one shard node per shard, whose id is the id of the shard's
first node, so node order and "lowest failed node" keep their meaning. The
callback joins the shard nodes, and its input template lists them: the
driver builds the callback's input by joining the shards' values, each of
which is the list of its members' values.

Only headers that the shards can run alone are cut. See `_header_of` for the
shape checked: plain task nodes with no links, errbacks, ``ignore_result``
or ``all_settled`` join, one callback that reads every member in order, and
members that read nothing from one another. Other headers run unsharded.
"""

from __future__ import annotations

from dataclasses import dataclass

from stem.canvas.spec import (
    GraphSpec,
    GroupSpec,
    ListInput,
    NodeId,
    NodeInput,
    NodeSpec,
    NoInput,
    Template,
    node_order,
    template_nodes,
)

#: Task name of a shard node in a home run. Workers never receive it: the
#: scripts write an outbox entry that activates the shard instead.
SHARD_TASK = "stem.shard"
#: Task name of a placeholder in a shard run for a node of the home run that
#: the members read. Activation copies the home node's value into it.
SHARD_INPUT_TASK = "stem.shard_input"
#: Text between the home run id and the shard node id in a shard run's id.
SHARD_SEPARATOR = "~s"


def shard_run_id(run_id: str, shard_node: NodeId) -> str:
    """Return the id of the shard run of a home run's shard node."""
    # NOTE: a user's run id may contain "~s" too. A run "a~s5" submitted
    # after run "a" wrote its shard 5 is taken as submitted already, and
    # run "a" submitted after it raises DriverError naming the id.
    return f"{run_id}{SHARD_SEPARATOR}{shard_node}"


@dataclass(frozen=True)
class Shard:
    """One shard of a chord header: a run of its own, written inactive."""

    #: The shard node's id in the home run, the id of the shard's first node.
    node: NodeId
    #: The shard run's spec: input placeholders, then the members' nodes.
    spec: GraphSpec
    #: Placeholder node ids, the home nodes whose values activation copies.
    inputs: list[NodeId]
    #: Nodes queued when the shard is activated, in node order.
    roots: list[NodeId]
    #: Number of header members in the shard.
    members: int


@dataclass(frozen=True)
class ShardPlan:
    """A spec with its large chord headers cut into shards."""

    home: GraphSpec
    shards: list[Shard]
    #: For each callback that joins shards, its shard node ids in order.
    joins: dict[NodeId, list[NodeId]]


@dataclass(frozen=True)
class _Header:
    group: GroupSpec
    join: NodeSpec
    #: The nodes outside the header that members depend on, in node order.
    inputs: list[NodeId]


def plan_shards(spec: GraphSpec, shard_size: int) -> ShardPlan | None:
    """Cut every chord header of more than ``shard_size`` members into shards.

    Returns None when no header is cut (``shard_size`` 0 turns sharding off).
    The rewrite depends only on its arguments, so a submit that is repeated
    after a crash writes the same shards.
    """
    if shard_size <= 0:
        return None
    cut_nodes: set[NodeId] = set()
    headers: list[_Header] = []
    # Outer groups have lower ids, so a header nested in a cut member stays
    # whole inside its shard.
    for group in spec.groups:
        if len(group.members) <= shard_size:
            continue
        if any(node in cut_nodes for member in group.members for node in member):
            continue
        header = _header_of(spec, group)
        if header is None:
            continue
        headers.append(header)
        cut_nodes.update(node for member in group.members for node in member)
    if not headers:
        return None
    return _rewrite(spec, headers, shard_size)


def _header_of(spec: GraphSpec, group: GroupSpec) -> _Header | None:
    """Return the group as a chord header that can be cut, or None if it cannot."""
    member_of: dict[NodeId, int] = {}
    for index, member in enumerate(group.members):
        if not member:
            return None
        for node_id in member:
            member_of[node_id] = index
    joins: set[NodeId] = set()
    inputs: set[NodeId] = set()
    ends = {*spec.sinks, *spec.settled, *template_nodes(spec.output)}
    by_id = spec.by_id
    errbacks = spec.errbacks_covering
    dependents = spec.dependents
    for node_id, index in member_of.items():
        node = by_id[node_id]
        if not _plain(node) or node_id in ends or errbacks[node_id]:
            return None
        outside = _outside_deps(spec, node, index, member_of)
        if outside is None:
            return None
        inputs.update(outside)
        for dependent in dependents[node_id]:
            if member_of.get(dependent) != index:
                joins.add(dependent)
    if len(joins) != 1:
        return None
    join = spec.node(joins.pop())
    if not _joins_members(join, group, member_of):
        return None
    if any(spec.node(node).options.ignore_result for node in inputs):
        return None
    return _Header(group, join, sorted(inputs, key=node_order))


def _outside_deps(
    spec: GraphSpec, node: NodeSpec, index: int, member_of: dict[NodeId, int]
) -> list[NodeId] | None:
    """Return a member node's dependencies outside the header, or None.

    None means the node cannot move to a shard: it depends on or reads
    another member, or it waits for both the header's input and its own
    member, which activation alone could not queue.
    """
    if not node.deps and isinstance(node.input, NoInput):
        # A member of a chord at the canvas's start: nothing to walk.
        return []
    outside = [dep for dep in node.deps if member_of.get(dep) != index]
    if any(dep in member_of for dep in outside):
        return None
    if outside and len(outside) != len(node.deps):
        return None
    for read in template_nodes(node.input):
        if member_of.get(read) != index and read not in outside:
            return None
    return outside


def _plain(node: NodeSpec) -> bool:
    """Tell whether a header node can run in a shard without the home run."""
    return (
        node.role == "task"
        and not node.side
        and not node.covers
        and not node.triggers
        and not node.settled
        and node.join == "fail_fast"
        and not node.options.ignore_result
    )


def _joins_members(
    join: NodeSpec, group: GroupSpec, member_of: dict[NodeId, int]
) -> bool:
    """Tell whether ``join`` is a callback that reads every member, in order."""
    if not _plain(join) or not isinstance(join.input, ListInput):
        return False
    if any(dep not in member_of for dep in join.deps):
        return False
    items = join.input.items
    if len(items) != len(group.members):
        return False
    for index, item in enumerate(items):
        reads = list(template_nodes(item))
        if not reads or any(member_of.get(read) != index for read in reads):
            return False
    return True


def _rewrite(spec: GraphSpec, headers: list[_Header], shard_size: int) -> ShardPlan:
    """Build the home spec and the shard specs for the headers to cut."""
    replaced: dict[NodeId, NodeSpec] = {}
    dropped: set[NodeId] = set()
    dropped_groups: set[int] = set()
    new_groups: dict[int, GroupSpec] = {}
    #: The shard node that stands for each header node in the home run.
    shard_of: dict[NodeId, NodeId] = {}
    shards: list[Shard] = []
    joins: dict[NodeId, list[NodeId]] = {}
    for header in headers:
        group = header.group
        members = group.members
        items = _items(header.join)
        header_nodes = {node for member in members for node in member}
        # Groups inside the members move to the shards. A group around the
        # whole chord (a chord that is a group member) stays in the home run.
        inner_groups = [
            other
            for other in spec.groups
            if other.id != group.id
            and all(node in header_nodes for member in other.members for node in member)
        ]
        dropped_groups.update(other.id for other in inner_groups)
        shard_nodes: list[NodeId] = []
        # Positions of the callback's deps, so each shard finds its sinks in
        # the order of the deps without scanning all of them once per shard.
        join_deps = {dep: index for index, dep in enumerate(header.join.deps)}
        for first in range(0, len(members), shard_size):
            chunk = members[first : first + shard_size]
            shard = _shard(
                spec,
                header,
                chunk,
                items[first : first + shard_size],
                inner_groups,
                join_deps,
            )
            shards.append(shard)
            shard_nodes.append(shard.node)
            dropped.update(node for member in chunk for node in member)
            shard_of.update((node, shard.node) for member in chunk for node in member)
            replaced[shard.node] = NodeSpec(
                id=shard.node,
                task=SHARD_TASK,
                deps=list(header.inputs),
                join="fail_fast",
                path=_shard_path(group.path, len(chunk)),
                group=group.id,
            )

        joins[header.join.id] = shard_nodes
        new_groups[group.id] = group.model_copy(
            update={"members": [[node] for node in shard_nodes]}
        )
        replaced[header.join.id] = header.join.model_copy(
            update={
                "deps": list(shard_nodes),
                "input": ListInput(items=[NodeInput(node=n) for n in shard_nodes]),
            }
        )

    nodes: list[NodeSpec] = []
    for node in spec.nodes:
        if node.id in replaced:
            nodes.append(replaced[node.id])
        elif node.id not in dropped:
            nodes.append(node)
    groups = [
        new_groups.get(group.id) or _with_shard_nodes(group, shard_of)
        for group in spec.groups
        if group.id not in dropped_groups
    ]
    home = GraphSpec(
        nodes=nodes,
        output=spec.output,
        sinks=list(spec.sinks),
        settled=list(spec.settled),
        groups=groups,
    )
    return ShardPlan(home=home, shards=shards, joins=joins)


def _with_shard_nodes(group: GroupSpec, shard_of: dict[NodeId, NodeId]) -> GroupSpec:
    """Return a group with each header node replaced by its shard node, once."""
    if not any(node in shard_of for member in group.members for node in member):
        return group
    members = [
        list(dict.fromkeys(shard_of.get(node, node) for node in member))
        for member in group.members
    ]
    return group.model_copy(update={"members": members})


def _shard_path(group_path: str, members: int) -> str:
    """Return a shard node's path, shown where errors and drawings name it."""
    step = f"shard of {members} members"
    return f"{group_path} > {step}" if group_path else step


def _items(join: NodeSpec) -> list[Template]:
    assert isinstance(join.input, ListInput)  # checked by _joins_members
    return list(join.input.items)


def _shard(
    spec: GraphSpec,
    header: _Header,
    chunk: list[list[NodeId]],
    items: list[Template],
    inner_groups: list[GroupSpec],
    join_deps: dict[NodeId, int],
) -> Shard:
    """Build one shard's spec from a slice of the header's members.

    ``join_deps`` maps each of the callback's deps to its position in them.
    """
    chunk_nodes = {node for member in chunk for node in member}
    placeholders = [
        NodeSpec(id=node, task=SHARD_INPUT_TASK, path=spec.node(node).path)
        for node in header.inputs
    ]
    by_id = spec.by_id
    members = [by_id[node] for member in chunk for node in member]
    roots = [
        node.id
        for node in members
        if not node.deps or all(dep not in chunk_nodes for dep in node.deps)
    ]
    sinks = sorted(
        (node for node in chunk_nodes if node in join_deps), key=join_deps.__getitem__
    )
    groups = [header.group.model_copy(update={"members": chunk})]
    groups += [
        other
        for other in inner_groups
        if all(node in chunk_nodes for member in other.members for node in member)
    ]
    shard_spec = GraphSpec(
        nodes=[*placeholders, *members],
        output=ListInput(items=items),
        sinks=sinks,
        groups=sorted(groups, key=lambda group: group.id),
    )
    return Shard(
        node=chunk[0][0],
        spec=shard_spec,
        inputs=list(header.inputs),
        roots=roots,
        members=len(chunk),
    )


def merged_view(home: GraphSpec, shards: dict[NodeId, GraphSpec]) -> GraphSpec:
    """Rebuild a home run's spec with each shard node replaced by its shard's nodes.

    ``shards`` maps each shard node to its shard run's current spec, which a
    splice inside the shard may have grown. The callback gets back its
    dependencies on the members and its input from the shards' outputs, so
    the result reads like the spec the run would have had without shards.
    A shard run that is gone (expired, or never written) is passed as an
    empty spec. Its shard node then stays in the view in place of its
    members, so the error recorded on that node can still be read.
    """
    nodes: list[NodeSpec] = []
    member_groups: dict[int, list[list[NodeId]]] = {}
    extra_groups: dict[int, GroupSpec] = {}
    for node in home.nodes:
        shard = shards.get(node.id)
        if shard is not None and not shard.nodes:
            nodes.append(node)
            if node.group is not None:
                member_groups.setdefault(node.group, []).append([node.id])
            continue
        if shard is not None:
            nodes += [n for n in shard.nodes if n.task != SHARD_INPUT_TASK]
            for group in shard.groups:
                if group.id == node.group:
                    member_groups.setdefault(group.id, []).extend(group.members)
                else:
                    extra_groups[group.id] = group
            continue
        reads = list(template_nodes(node.input))
        if reads and all(read in shards for read in reads):
            items: list[Template] = []
            deps: list[NodeId] = []
            for read in reads:
                output = shards[read].output
                if not shards[read].nodes:
                    items.append(NodeInput(node=read))
                    deps.append(read)
                elif isinstance(output, ListInput):
                    items += output.items
                    deps += shards[read].sinks
            node = node.model_copy(
                update={"deps": deps, "input": ListInput(items=items)}
            )
        nodes.append(node)
    groups = [
        group.model_copy(update={"members": member_groups[group.id]})
        if group.id in member_groups
        else _with_members(group, shards)
        for group in home.groups
    ]
    groups += extra_groups.values()
    return GraphSpec(
        nodes=sorted(nodes, key=lambda node: node_order(node.id)),
        output=home.output,
        sinks=list(home.sinks),
        settled=list(home.settled),
        groups=sorted(groups, key=lambda group: group.id),
    )


def _with_members(group: GroupSpec, shards: dict[NodeId, GraphSpec]) -> GroupSpec:
    """Return a home group around a chord with each shard node replaced by its nodes."""
    if not any(node in shards for member in group.members for node in member):
        return group
    members: list[list[NodeId]] = []
    for member in group.members:
        nodes: list[NodeId] = []
        for node in member:
            if node in shards and shards[node].nodes:
                nodes += [
                    n.id for n in shards[node].nodes if n.task != SHARD_INPUT_TASK
                ]
            else:
                nodes.append(node)
        members.append(sorted(nodes, key=node_order))
    return group.model_copy(update={"members": members})
