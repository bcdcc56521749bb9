"""User ids with ``@`` in the user part and canonical ticket user names, end to end
(reference §13.8): the task search that resolves an unanswered POST must find our task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from engine_support import pick, running, seeded, started, submit, wait_terminal, writes_to

from lifecycled.domain.states import OpState
from lifecycled.pve.auth import TicketAuth
from lifecycled.pve.http import HttpPveClient
from lifecycled.sim import SimServer

SimFactory = Callable[..., Awaitable[SimServer]]

AD_USER = "john@corp.com@ad"
PASSWORD = "pw-for-john"


async def test_token_of_a_user_with_at_in_its_name_adopts_its_task(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """A token ``john@corp.com@ad!ci``: an unanswered reboot is found by user and adopted."""
    server = await sim_factory(token=f"{AD_USER}!ci=secret-ci")
    guest = pick(server, "qemu", True)
    server.sim.add_fault(method="POST", path=f"/qemu/{guest.vmid}/status/reboot$", drop=True)
    async with running(server, tmp_path) as rt:
        op = await submit(rt, "reboot", guest, key="at-token")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.upid is not None and done.upid.user == f"{AD_USER}!ci"
    assert len(writes_to(server, guest.vmid, "/status/reboot")) == 1


async def test_ticket_user_is_the_canonical_name_from_access_ticket(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """A ticket login as ``JOHN@Corp.com@ad`` searches tasks as the canonical user: adopted."""
    server = await sim_factory(users={AD_USER: PASSWORD}, case_insensitive_realms=("ad",))
    guest = pick(server, "qemu", True)
    server.sim.add_fault(method="POST", path=f"/qemu/{guest.vmid}/status/reboot$", drop=True)
    client = HttpPveClient(
        server.url, auth=TicketAuth(username="JOHN@Corp.com@ad", password=PASSWORD)
    )
    async with started(await seeded(server, tmp_path), client) as (rt, _task):
        op = await submit(rt, "reboot", guest, key="canonical")
        done = await wait_terminal(rt, op.id)
    assert client.user == AD_USER
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.upid is not None and done.upid.user == AD_USER
    assert len(writes_to(server, guest.vmid, "/status/reboot")) == 1
