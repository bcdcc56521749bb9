"""One API request through the simulator: log, faults, routing, auth, node checks, answer."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from lifecycled.sim import api, wire
from lifecycled.sim.auth import Authenticator, AuthError
from lifecycled.sim.errors import SimError
from lifecycled.sim.faults import ACTIVE_LOCK_TIMEOUT, Fault
from lifecycled.sim.records import Caller, RequestRecord
from lifecycled.sim.simulator import Simulator

PREFIX = "/api2/json"
_SECRET_PARAMS = frozenset({"password", "cipassword", "new-password"})


class ApiPipeline:
    """Turns an aiohttp request into a Proxmox-shaped answer."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.auth = Authenticator(sim.cfg)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method.upper()
        record = self.sim.record_request(method, request.path, {})
        fault: Fault | None = None
        caller = Caller(user="")
        try:
            params = await wire.read_params(request)
            record.params = {k: ("***" if k in _SECRET_PARAMS else v) for k, v in params.items()}
            fault = self.sim.take_fault(method, request.path)
            if fault is not None:
                record.fault = fault.id
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None and not (fault.execute or fault.drop):
                    return self._finish(record, caller, self._fault_answer(fault))
                caller.exitstatus = fault.exitstatus
                caller.effect = fault.effect
                caller.task_seconds = fault.task_seconds
            response = await self._dispatch(request, method, params, caller, record)
        except SimError as exc:
            if exc.status == 401:
                await asyncio.sleep(self.sim.cfg.auth_delay)
            response = wire.from_sim_error(exc)
        if fault is not None and fault.drop:
            self._drop(request)
            record.status = None
            record.reason = "dropped"
            record.upid = caller.upids[0] if caller.upids else None
            return response
        if fault is not None and fault.status is not None:
            response = self._fault_answer(fault)
        if fault is not None and fault.answer is not None:
            return await self._wrong_answer(request, record, caller, fault.answer, response)
        return self._finish(record, caller, response)

    async def _dispatch(
        self,
        request: web.Request,
        method: str,
        params: dict[str, Any],
        caller: Caller,
        record: RequestRecord,
    ) -> web.StreamResponse:
        path = request.path
        rel = path[len(PREFIX) :] if path.startswith(PREFIX + "/") else None
        if rel is not None:  # empty path segments are skipped (§13.13)
            rel = "/" + "/".join(part for part in rel.split("/") if part)
        found = api.find_route(method, rel) if rel is not None else None
        if found is None:
            shown = rel if rel is not None else path
            raise SimError(501, f"Method '{method} {shown}' not implemented")
        assert rel is not None
        route, args = found
        if not route.public:
            try:
                caller.user = self.auth.authenticate(
                    method,
                    request.headers.get("Authorization"),
                    request.cookies.get("PVEAuthCookie"),
                    request.headers.get("CSRFPreventionToken"),
                )
            except AuthError as exc:
                raise SimError(401, str(exc)) from None
            record.user = caller.user
        node = args.get("node")
        if node is not None:
            host = self.sim.nodes.get(node)
            if host is None:
                raise SimError(
                    500,
                    f"hostname lookup '{node}' failed - failed to get address info for: "
                    f"{node}: Name or service not known",
                )
            if not host.online:
                raise SimError(595, "No route to host")
        api.check_params(method, rel, params, args)
        ctx = api.Ctx(
            sim=self.sim, auth=self.auth, caller=caller, method=method, params=params, args=args
        )
        reply = await route.handler(ctx)
        return wire.ok(reply.data, reply.total)

    @staticmethod
    def _fault_answer(fault: Fault) -> web.Response:
        status = int(fault.status or 500)
        reason = fault.reason if fault.reason is not None else "simulated fault"
        empty = status == 401 or status >= 595
        return wire.error(status, reason, fault.errors, empty=empty)

    async def _wrong_answer(
        self,
        request: web.Request,
        record: RequestRecord,
        caller: Caller,
        answer: str,
        response: web.StreamResponse,
    ) -> web.StreamResponse:
        """The request was handled; answer it the way the ``answer`` fault says."""
        if answer == "fork-lock-timeout":
            return self._finish(record, caller, wire.error(500, ACTIVE_LOCK_TIMEOUT))
        body = response.body if isinstance(response, web.Response) else None
        raw = bytes(body) if isinstance(body, bytes | bytearray) else b""
        half = raw[: len(raw) // 2]
        if answer == "garbled":
            garbled = web.Response(
                status=200, body=half + b"\x00garbled", content_type="application/json"
            )
            return self._finish(record, caller, garbled)
        # truncated: the head promises the whole body, half of it comes, the connection closes.
        stream = web.StreamResponse(status=200)
        stream.content_type = "application/json"
        stream.content_length = len(raw)
        await stream.prepare(request)
        await stream.write(half)
        self._drop(request)
        self._finish(record, caller, stream)
        record.reason = "truncated"
        return stream

    @staticmethod
    def _drop(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.close()

    @staticmethod
    def _finish(
        record: RequestRecord, caller: Caller, response: web.StreamResponse
    ) -> web.StreamResponse:
        record.status = response.status
        record.reason = response.reason
        record.upid = caller.upids[0] if caller.upids else None
        return response
