"""The default Proxmox adapter: the API over HTTP(S) with aiohttp (reference §2, §4–§6).

One :class:`aiohttp.ClientSession` per client, created lazily inside the running loop.
Every failure becomes a :class:`PveError` classified by
:func:`lifecycled.domain.classify.classify_http`: an HTTP error by its status and text, a
connect failure as transient (nothing was sent), a timeout or a dropped connection after the
request went out as "no answer" (ambiguous for a write).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import attrs
import yarl

from lifecycled.domain.actions import Action, UnsupportedAction, spec_for
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind
from lifecycled.domain.upid import Upid
from lifecycled.domain.userid import is_userid
from lifecycled.errors import ConfigError, PveError
from lifecycled.pve import wire
from lifecycled.pve.auth import TicketAuth, TokenAuth
from lifecycled.pve.port import (
    ClusterResource,
    GuestConfig,
    GuestStatus,
    NodeEntry,
    RequestHook,
    TaskList,
    TaskStatus,
)
from lifecycled.pve.timeouts import Timeouts
from lifecycled.pve.tls import TlsOptions, ssl_for
from lifecycled.pve.transport import Transport

logger = logging.getLogger(__name__)

_DEFAULT_TLS = TlsOptions()
_DEFAULT_TIMEOUTS = Timeouts()
_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class _Ticket:
    ticket: str = attrs.field(repr=False)
    csrf: str = attrs.field(repr=False)
    obtained: float
    #: The user id the server settled on (canonical for a case-insensitive realm, §13.8).
    username: str


class HttpPveClient:
    """:class:`lifecycled.pve.port.PveClient` over aiohttp.

    ``base_url`` is the pveproxy origin (``https://127.0.0.1:8006``; ``http://`` for the
    simulator); ``/api2/json`` is appended. ``on_request(method, endpoint, code, seconds)`` is
    called once per HTTP request with a low-cardinality endpoint label. ``clock`` (monotonic
    seconds) only decides when a ticket is renewed.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: TokenAuth | TicketAuth,
        tls: TlsOptions = _DEFAULT_TLS,
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
        on_request: RequestHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url = yarl.URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"invalid Proxmox URL {base_url!r}: expected http(s)://HOST[:PORT], "
                "e.g. https://127.0.0.1:8006"
            )
        api = str(url)
        self._auth = auth
        self._timeouts = timeouts
        self._clock = clock
        self._ticket: _Ticket | None = None
        self._login_lock = asyncio.Lock()
        self._http = Transport(
            api if api.endswith("/api2/json") else api + "/api2/json",
            ssl=ssl_for(tls) if url.scheme == "https" else True,
            timeouts=timeouts,
            on_request=on_request,
            secrets=self._secrets,
        )

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def user(self) -> str:
        """The effective user as it appears in UPIDs: ``user@realm!tokenid`` or the user.

        With a ticket it is the ``username`` that ``/access/ticket`` answered: realms with
        ``case-sensitive 0`` canonicalise the name, and UPIDs carry that form (§13.8).
        """
        if isinstance(self._auth, TokenAuth):
            return self._auth.user
        if self._ticket is not None:
            return self._ticket.username
        return self._auth.username

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        await self._http.close()

    def _secrets(self) -> list[str]:
        if isinstance(self._auth, TokenAuth):
            return [self._auth.secret]
        found = [self._auth.password]
        if self._ticket is not None:
            found += [self._ticket.ticket, self._ticket.csrf]
        return found

    # --- the port ----------------------------------------------------------------------------

    async def dispatch(
        self,
        node: str,
        kind: GuestKind,
        action: Action,
        vmid: int,
        params: Mapping[str, Any],
    ) -> Upid | None:
        """Call the catalogued endpoint: the UPID, or ``None`` when the endpoint answered null."""
        try:
            spec = spec_for(kind, action)
        except UnsupportedAction as exc:
            raise PveError(ErrorClass.PERMANENT, str(exc), method="POST", sent=False) from None
        req = wire.dispatch_request(node, spec, vmid, params)
        query, body = (req.form, None) if req.in_query else (None, req.form)
        envelope = await self._request(
            req.method,
            req.path,
            req.template,
            params=query,
            data=body,
            seconds=self._timeouts.for_dispatch(spec, req.form),
            action=str(action),
        )
        return wire.dispatch_result(
            envelope.get("data"), method=req.method, path=req.path, action=str(action)
        )

    async def task_status(self, upid: Upid) -> TaskStatus:
        """Status of a task, read on the UPID's own node."""
        path = wire.task_path(upid, "status")
        env = await self._get(path, wire.EP_TASK_STATUS, seconds=self._timeouts.task_read)
        return self._decoded(path, lambda: wire.task_status_from(env.get("data"), upid))

    async def task_log(self, upid: Upid, *, start: int = 0, limit: int = 50) -> list[str]:
        """Lines of a task log from line ``start``."""
        path = wire.task_path(upid, "log")
        env = await self._get(
            path,
            wire.EP_TASK_LOG,
            params={"start": start, "limit": limit},
            seconds=self._timeouts.task_read,
        )
        return self._decoded(path, lambda: wire.task_log_from(env.get("data")))

    async def tasks(
        self,
        node: str,
        *,
        source: str = "all",
        vmid: int | None = None,
        typefilter: str | None = None,
        since: int | None = None,
        userfilter: str | None = None,
        start: int = 0,
        limit: int = 50,
    ) -> TaskList:
        """The node's task list, filtered by Proxmox itself (reference §4.3)."""
        path = f"/nodes/{node}/tasks"
        query = wire.task_list_query(
            source=source,
            vmid=vmid,
            typefilter=typefilter,
            since=since,
            userfilter=userfilter,
            start=start,
            limit=limit,
        )
        env = await self._get(
            path,
            wire.EP_TASKS,
            params=query,
            seconds=self._timeouts.task_read,
        )
        return self._decoded(path, lambda: wire.task_list_from(env.get("data"), env.get("total")))

    async def stop_task(self, upid: Upid) -> None:
        """``DELETE /nodes/{node}/tasks/{upid}`` on the UPID's node."""
        path = wire.task_path(upid)
        await self._request(
            "DELETE", path, wire.EP_TASK, params=None, data=None, seconds=self._timeouts.write
        )

    async def guest_status(self, node: str, kind: GuestKind, vmid: int) -> GuestStatus:
        path = wire.guest_path(node, kind, vmid, "status/current")
        env = await self._get(path, wire.EP_GUEST_STATUS, seconds=self._timeouts.read)
        return self._decoded(path, lambda: wire.guest_status_from(env.get("data"), vmid))

    async def guest_config(
        self, node: str, kind: GuestKind, vmid: int, *, current: bool = False
    ) -> GuestConfig:
        path = wire.guest_path(node, kind, vmid, "config")
        env = await self._get(
            path,
            wire.EP_GUEST_CONFIG,
            params={"current": 1} if current else None,
            seconds=self._timeouts.read,
        )
        return self._decoded(path, lambda: wire.guest_config_from(env.get("data")))

    async def cluster_resources(self) -> list[ClusterResource]:
        """``GET /cluster/resources?type=vm``."""
        path = "/cluster/resources"
        env = await self._get(
            path, wire.EP_RESOURCES, params={"type": "vm"}, seconds=self._timeouts.read
        )
        return self._decoded(path, lambda: wire.cluster_resources_from(env.get("data")))

    async def node_guests(
        self, node: str, kind: GuestKind, *, only: Collection[int] | None = None
    ) -> list[GuestStatus]:
        """``GET /nodes/{node}/qemu|lxc`` (live, unlike ``/cluster/resources``)."""
        path = wire.node_guests_path(node, kind)
        env = await self._request(
            "GET",
            path,
            wire.EP_NODE_GUESTS,
            params=None,
            data=None,
            seconds=self._timeouts.read,
            only=only,
        )
        return self._decoded(path, lambda: wire.node_guests_from(env.get("data"), only))

    async def set_tags(self, node: str, kind: GuestKind, vmid: int, tags: str, digest: str) -> None:
        """``PUT …/{vmid}/config`` with ``tags`` and ``digest`` (sync for both kinds)."""
        await self._request(
            "PUT",
            wire.guest_path(node, kind, vmid, "config"),
            wire.EP_GUEST_CONFIG,
            params=None,
            data={"tags": tags, "digest": digest},
            seconds=self._timeouts.sync_write,
        )

    async def node_status(self, node: str) -> Mapping[str, Any]:
        path = f"/nodes/{node}/status"
        env = await self._get(path, wire.EP_NODE_STATUS, seconds=self._timeouts.read)
        return self._decoded(path, lambda: wire.mapping_from(env.get("data"), "node status"))

    async def ha_resource(self, sid: str) -> Mapping[str, Any] | None:
        """``GET /cluster/ha/resources/{sid}``; ``None`` when it is not an HA resource."""
        path = f"/cluster/ha/resources/{sid}"
        try:
            env = await self._get(path, wire.EP_HA_RESOURCE, seconds=self._timeouts.read)
        except PveError as err:
            if wire.is_no_such_ha_resource(err):
                return None
            raise
        return self._decoded(path, lambda: wire.mapping_from(env.get("data"), "HA resource"))

    async def ha_set_state(self, sid: str, state: str) -> None:
        """``PUT /cluster/ha/resources/{sid}`` with ``state``."""
        await self._request(
            "PUT",
            f"/cluster/ha/resources/{sid}",
            wire.EP_HA_RESOURCE,
            params=None,
            data={"state": state},
            seconds=self._timeouts.write,
        )

    async def version(self) -> Mapping[str, Any]:
        env = await self._get("/version", wire.EP_VERSION, seconds=self._timeouts.read)
        return self._decoded("/version", lambda: wire.mapping_from(env.get("data"), "version"))

    async def nodes(self) -> list[NodeEntry]:
        env = await self._get("/nodes", wire.EP_NODES, seconds=self._timeouts.read)
        return self._decoded("/nodes", lambda: wire.nodes_from(env.get("data")))

    async def node_config(self, node: str) -> tuple[str, str]:
        path = f"/nodes/{node}/config"
        env = await self._get(path, wire.EP_NODE_CONFIG, seconds=self._timeouts.read)
        return self._decoded(path, lambda: wire.node_config_from(env.get("data")))

    async def set_node_description(self, node: str, description: str, digest: str) -> None:
        await self._request(
            "PUT",
            f"/nodes/{node}/config",
            wire.EP_NODE_CONFIG,
            params=None,
            data={"description": description, "digest": digest},
            seconds=self._timeouts.sync_write,
        )

    async def node_time(self, node: str) -> float:
        path = f"/nodes/{node}/time"
        env = await self._get(path, wire.EP_NODE_TIME, seconds=self._timeouts.read)
        return self._decoded(path, lambda: wire.node_time_from(env.get("data")))

    async def permissions(self) -> dict[str, frozenset[str]]:
        path = "/access/permissions"
        env = await self._get(path, wire.EP_PERMISSIONS, seconds=self._timeouts.read)
        return self._decoded(path, lambda: wire.permissions_from(env.get("data")))

    # --- requests ----------------------------------------------------------------------------

    async def _get(
        self,
        path: str,
        template: str,
        *,
        params: Mapping[str, Any] | None = None,
        seconds: float,
    ) -> Mapping[str, Any]:
        return await self._request("GET", path, template, params=params, data=None, seconds=seconds)

    def _decoded(self, path: str, decode: Callable[[], _T]) -> _T:
        try:
            return decode()
        except (ValueError, TypeError, KeyError) as exc:
            raise wire.protocol_error(
                f"unreadable answer: {exc}", method="GET", path=path, status=200
            ) from None

    async def _request(
        self,
        method: str,
        path: str,
        template: str,
        *,
        params: Mapping[str, Any] | None,
        data: Mapping[str, str] | None,
        seconds: float,
        action: str | None = None,
        only: Collection[int] | None = None,
    ) -> Mapping[str, Any]:
        """One API call: auth headers, one re-login and retry on a ticket 401, the envelope.

        ``action`` (lifecycle calls only) goes to the classifier with any failure. ``only``
        (a node's guest listing): the guests the caller reads; the envelope may hold just
        their items (:meth:`Transport.listing`)."""
        retried = False
        while True:
            ticket = await self._ticket_for_use() if isinstance(self._auth, TicketAuth) else None
            headers = self._auth_headers(method, ticket)
            reply = await self._http.send(
                method,
                path,
                template,
                params=params,
                data=data,
                headers=headers,
                seconds=seconds,
                action=action,
            )
            if reply.status == 401 and ticket is not None and not retried:
                # Authentication is checked before any handler runs: retrying cannot repeat work.
                logger.info("pve.ticket_rejected", extra={"endpoint": template})
                retried = True
                await self._relogin(stale=ticket)
                continue
            if only is not None:
                return self._http.listing(reply, method, path, only)
            return self._http.envelope(reply, method, path, action=action)

    def _auth_headers(self, method: str, ticket: _Ticket | None) -> dict[str, str]:
        if isinstance(self._auth, TokenAuth):
            return {"Authorization": self._auth.header()}
        assert ticket is not None
        headers = {"Cookie": f"PVEAuthCookie={ticket.ticket}"}
        if method != "GET":
            headers["CSRFPreventionToken"] = ticket.csrf
        return headers

    # --- tickets -----------------------------------------------------------------------------

    async def _ticket_for_use(self) -> _Ticket:
        """A valid ticket: log in the first time, renew once it is older than ``renew_after``."""
        auth = self._auth
        assert isinstance(auth, TicketAuth)
        current = self._ticket
        if current is not None and self._clock() - current.obtained < auth.renew_after:
            return current
        async with self._login_lock:
            current = self._ticket
            if current is not None and self._clock() - current.obtained < auth.renew_after:
                return current
            if current is not None:
                try:
                    self._ticket = await self._post_ticket(current.ticket)
                except PveError as err:
                    if err.status != 401:
                        raise
                    logger.info("pve.ticket_renew_refused", extra={"user": auth.username})
                else:
                    logger.info("pve.ticket_renewed", extra={"user": auth.username})
                    return self._ticket
            self._ticket = await self._post_ticket(auth.password)
            logger.info("pve.login", extra={"user": auth.username})
            return self._ticket

    async def _relogin(self, *, stale: _Ticket) -> None:
        auth = self._auth
        assert isinstance(auth, TicketAuth)
        async with self._login_lock:
            if self._ticket is not stale:
                return  # another call already logged in again
            self._ticket = await self._post_ticket(auth.password)
            logger.info("pve.login", extra={"user": auth.username, "reason": "401"})

    async def _post_ticket(self, password: str) -> _Ticket:
        auth = self._auth
        assert isinstance(auth, TicketAuth)
        reply = await self._http.send(
            "POST",
            wire.EP_TICKET,
            wire.EP_TICKET,
            params=None,
            data={"username": auth.username, "password": password},
            headers={},
            seconds=self._timeouts.read,
        )
        env = self._http.envelope(reply, "POST", wire.EP_TICKET)
        data = env.get("data")
        if not isinstance(data, Mapping):
            raise wire.protocol_error(
                "the ticket answer has no data", method="POST", path=wire.EP_TICKET, status=200
            )
        if data.get("NeedTFA"):
            raise PveError(
                ErrorClass.PERMANENT,
                f"user {auth.username} needs two-factor authentication: use an API token",
                status=200,
                method="POST",
                path=wire.EP_TICKET,
            )
        ticket, csrf = data.get("ticket"), data.get("CSRFPreventionToken")
        if not isinstance(ticket, str) or not isinstance(csrf, str) or not ticket:
            raise wire.protocol_error(
                "the ticket answer lacks ticket or CSRFPreventionToken",
                method="POST",
                path=wire.EP_TICKET,
                status=200,
            )
        name = data.get("username")
        username = name if isinstance(name, str) and is_userid(name) else auth.username
        return _Ticket(ticket=ticket, csrf=csrf, obtained=self._clock(), username=username)
