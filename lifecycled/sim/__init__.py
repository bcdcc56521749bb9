"""A Proxmox VE API simulator: the real wire format, real UPIDs, tasks, locks and faults.

It is what the demo, the tests and the benchmarks run against::

    from lifecycled.sim import SimConfig, SimServer

    async with SimServer(SimConfig(nodes=("pve1", "pve2"), task_seconds=0.2)) as server:
        server.url      # http://127.0.0.1:PORT; the API is at server.url + "/api2/json"
        server.sim      # the in-memory Simulator: state, faults, out-of-band changes

See ``docs/SIMULATOR.md`` for the behaviours modelled and the ``/_sim/`` control API.
"""

from lifecycled.sim.config import ApiToken, SimConfig, SimConfigError
from lifecycled.sim.faults import Fault
from lifecycled.sim.model import Guest, HaResource, Node
from lifecycled.sim.records import Caller, RequestRecord
from lifecycled.sim.server import SimServer
from lifecycled.sim.simulator import Simulator
from lifecycled.sim.tasks import Task

__all__ = [
    "ApiToken",
    "Caller",
    "Fault",
    "Guest",
    "HaResource",
    "Node",
    "RequestRecord",
    "SimConfig",
    "SimConfigError",
    "SimServer",
    "Simulator",
    "Task",
]
