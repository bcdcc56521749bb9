"""The pre-dispatch read of the guest, batched: one live listing per node and guest kind
settles the Check of every op claimed together (issue 15).

Each op that reads ``status/current`` alone (:func:`~lifecycled.domain.check.reads_status_only`)
joins the open *batch* of its ``(node, kind)``. A batch's listing
(``GET /nodes/{node}/qemu|lxc``) is sent once no earlier listing of that node and kind is
in flight, after one turn of the event loop so that ops claimed in the same tick join it;
ops that arrive while it is in flight form the next batch. So every op's listing is
requested *after* the op was claimed — as fresh as the ``status/current`` it replaces — and
a node never has more than one listing of a kind in flight from this process.

Each op then asks :func:`~lifecycled.domain.check.check_from_listing`; where the listing
cannot settle its Check the same way (guest missing, a running VM whose QMP run state
decides, a failed listing), the op reads ``status/current`` as before. Every other op
(destructive or config-reading actions) reads the guest the usual way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from lifecycled.domain.actions import ActionSpec, GuestView
from lifecycled.domain.check import Listed, check_from_listing, reads_status_only
from lifecycled.domain.op import GuestKind, Op
from lifecycled.errors import PveError, RequestNotSent
from lifecycled.pve.port import PveClient

log = logging.getLogger("lifecycled.engine")

#: Reads one op's guest the usual way (``Executor.observe``).
Observe = Callable[[Op, ActionSpec], Awaitable[GuestView]]
#: A node's listing of one kind by vmid; ``None`` when it could not be read.
Listing = Mapping[int, Listed] | None


class _Batch:
    """Ops waiting for one listing of a (node, kind)."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.listing: Listing = None
        #: The members' guests: only their items of the listing are decoded.
        self.vmids: set[int] = set()


class LiveCheck:
    """Reads the guest for the pre-dispatch Check, sharing one listing per (node, kind)."""

    def __init__(self, *, pve: PveClient, observe: Observe) -> None:
        self.pve = pve
        self.observe = observe
        self._open: dict[tuple[str, GuestKind], _Batch] = {}
        self._sending: dict[tuple[str, GuestKind], asyncio.Lock] = {}

    async def view(self, op: Op, spec: ActionSpec) -> GuestView:
        """The guest as the Check needs it: from the node's listing when that settles the
        Check (:func:`check_from_listing`), else from :attr:`observe`."""
        if not reads_status_only(spec, op.params):
            return await self.observe(op, spec)
        listing = await self.listing(op.guest.node, op.guest.kind, op.guest.vmid)
        if listing is not None:
            found = check_from_listing(spec, op.params, op.guest.node, listing.get(op.guest.vmid))
            if found.view is not None:
                return found.view
            log.debug(
                "check.read_per_op",
                extra={"op_id": op.id, "vmid": op.guest.vmid, "reason": found.reason},
            )
        return await self.observe(op, spec)

    async def listing(self, node: str, kind: GuestKind, vmid: int) -> Listing:
        """The node's live listing of ``kind`` — the items of ``vmid`` and of the other
        guests of the same batch —, requested after this call began (shared with every
        caller that joined the same batch); ``None`` when it could not be read."""
        key = (node, kind)
        batch = self._open.get(key)
        if batch is not None:
            batch.vmids.add(vmid)
            await batch.done.wait()
            return batch.listing
        batch = self._open[key] = _Batch()
        batch.vmids.add(vmid)
        try:
            async with self._sending.setdefault(key, asyncio.Lock()):
                await asyncio.sleep(0)  # ops claimed in the same tick join this batch
                if self._open.get(key) is batch:
                    del self._open[key]  # closed: later callers form the next batch
                batch.listing = await self._read(node, kind, batch.vmids)
        finally:
            if self._open.get(key) is batch:
                del self._open[key]
            batch.done.set()  # a cancelled sender leaves ``None``: its batch reads per op
        return batch.listing

    async def _read(self, node: str, kind: GuestKind, vmids: set[int]) -> Listing:
        try:
            items = await self.pve.node_guests(node, kind, only=frozenset(vmids))
        except (PveError, RequestNotSent) as exc:
            log.warning(
                "check.listing_failed",
                extra={"node": node, "kind": str(kind), "guests": len(vmids), "error": str(exc)},
            )
            return None
        return {item.vmid: item.listed() for item in items}
