"""Placement across a cluster (SPEC §7) — pure: which daemon acts for a guest, which one
reports a lost guest, and what a request for another node's guest is answered.

Proxmox places guests; lifecycled follows. A daemon serves a set of nodes (``--node``); it
dispatches only for guests whose *current* node it serves, and of the daemons that see a
managed guest vanish from the whole cluster exactly one reports it LOST: the one serving the
node the guest was last seen on, or — when that node is gone or offline — the one serving the
alphabetically first online node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from lifecycled.domain.node import NodeState
from lifecycled.errors import PolicyRefused

_NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")


class WrongNode(PolicyRefused):
    """A request for a guest that runs on a node this daemon does not serve (HTTP 421)."""

    def __init__(self, vmid: int, node: str, served: Iterable[str]) -> None:
        names = ", ".join(sorted(served))
        super().__init__(
            "wrong_node",
            f"guest {vmid} is on node {node}, which this lifecycled does not serve (it serves "
            f"{names}): send the request to the lifecycled of node {node}",
        )
        self.vmid = vmid
        self.node = node


def parse_nodes(value: str | Iterable[str]) -> tuple[str, ...]:
    """The served nodes of ``--node`` (comma-separated and/or repeated), in order, once each.

    Raises :class:`ValueError` for an empty list or a name that is not a Proxmox node name.
    """
    parts = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for part in parts:
        for name in str(part).split(","):
            name = name.strip()
            if not name:
                continue
            if not _NODE_RE.match(name):
                raise ValueError(f"{name!r} is not a Proxmox node name")
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError("no node named")
    return tuple(out)


def missing_nodes(served: Iterable[str], cluster: Iterable[str]) -> list[str]:
    """The served nodes the cluster does not have (a daemon refuses to start with any)."""
    known = set(cluster)
    return [n for n in served if n not in known]


def serves(served: Iterable[str], node: str) -> bool:
    return node in set(served)


def lost_reporter(last_node: str, online: Mapping[str, bool], served: Iterable[str]) -> bool:
    """Whether this daemon (serving ``served``) reports a managed guest last seen on
    ``last_node`` that is absent from the whole cluster.

    ``online`` maps every cluster node to whether it is online. The reporter is the daemon of
    ``last_node`` while that node is an online cluster node; else the daemon of the
    alphabetically first online node; with no node online, nobody (nothing can be known).
    """
    mine = set(served)
    if online.get(last_node, False):
        return last_node in mine
    up = sorted(n for n, is_up in online.items() if is_up)
    return bool(up) and up[0] in mine


#: The line lifecycled keeps in a node's Proxmox ``description`` (``/nodes/{node}/config``):
#: the node's lifecycle state as every daemon of the cluster must respect it.
_MARK_RE = re.compile(r"^lifecycled-node-state: ([a-z]+)$", re.MULTILINE)
#: States published cluster-wide (the others are this daemon's own business).
PUBLISHED = frozenset({NodeState.DRAINING, NodeState.DECOMMISSIONED})


def node_mark(description: str) -> NodeState | None:
    """The lifecycle state published in a node's description, if any."""
    m = _MARK_RE.search(description or "")
    if m is None:
        return None
    try:
        state = NodeState(m.group(1))
    except ValueError:
        return None
    return state if state in PUBLISHED else None


def with_node_mark(description: str, state: NodeState | None) -> str:
    """The description with its mark set to ``state`` (removed for ``None`` or a state that
    is not published); the operator's own text is kept as it is."""
    lines = [line for line in (description or "").split("\n") if not _MARK_RE.match(line)]
    while lines and not lines[-1]:
        lines.pop()
    if state is not None and state in PUBLISHED:
        lines.append(f"lifecycled-node-state: {state}")
    return "\n".join(lines)
