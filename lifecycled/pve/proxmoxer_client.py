"""The proxmoxer-backed :class:`PveClient`: blocking proxmoxer calls in a bounded pool.

Built by :func:`lifecycled.pve.proxmoxer_backend.build_proxmoxer_client`; see that module
for the backends and the limit of the pvesh (CLI) backends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import requests
from proxmoxer.core import ResourceException

from lifecycled.domain.actions import Action, UnsupportedAction, spec_for
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind
from lifecycled.domain.upid import Upid
from lifecycled.domain.userid import ticket_userid
from lifecycled.errors import ConfigError, PveError
from lifecycled.pve import wire
from lifecycled.pve.port import (
    ClusterResource,
    GuestConfig,
    GuestStatus,
    NodeEntry,
    RequestHook,
    TaskList,
    TaskStatus,
)
from lifecycled.pve.proxmoxer_errors import (
    ConnectFailed,
    cli_answer,
    failure,
    resource_error,
    upid_text,
)

logger = logging.getLogger("lifecycled.pve.proxmoxer_backend")

CLI_BACKENDS = frozenset({"local", "ssh_paramiko", "openssh"})
#: Extra time the event loop waits beyond proxmoxer's own limit before giving up on a thread.
_GRACE = 30.0

_REDACTED = "***"
_T = TypeVar("_T")


class ProxmoxerPveClient:
    """:class:`lifecycled.pve.port.PveClient` over a proxmoxer ``ProxmoxAPI``.

    ``connect`` builds the ``ProxmoxAPI`` (it may log in or open an ssh session, so it runs
    in the pool, on first use). ``user`` is the effective user that appears in UPIDs
    (``root@pam`` for pvesh as root). ``timeout`` is the limit proxmoxer was given.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        backend: str,
        user: str,
        timeout: float,
        max_workers: int = 4,
        on_request: RequestHook | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        if max_workers < 1:
            raise ConfigError("the proxmoxer thread pool needs at least one worker")
        self._connect = connect
        self._backend = backend
        self._user = user
        self._timeout = timeout
        self._on_request = on_request
        self._secrets = tuple(s for s in secrets if s)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=f"pve-{backend}"
        )
        self._api: Any = None
        self._api_lock = threading.Lock()
        self._closed = False

    @property
    def user(self) -> str:
        """The effective user in UPIDs; with a password ticket, the user id the ticket was
        issued to (canonical for a case-insensitive realm, reference §13.8)."""
        return self._user

    @property
    def backend(self) -> str:
        return self._backend

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
        """Close proxmoxer's session and the pool (idempotent); running calls are not awaited.

        Later calls fail with a transient error (nothing is sent).
        """
        self._closed = True
        api, self._api = self._api, None
        self._pool.shutdown(wait=False, cancel_futures=True)
        session = getattr(api, "_store", {}).get("session") if api is not None else None
        if isinstance(session, requests.Session):
            await asyncio.to_thread(session.close)
        ssh = getattr(session, "ssh_client", None)
        if ssh is not None and callable(getattr(ssh, "close", None)):
            await asyncio.to_thread(ssh.close)

    # --- the port ----------------------------------------------------------------------------

    async def dispatch(
        self,
        node: str,
        kind: GuestKind,
        action: Action,
        vmid: int,
        params: Mapping[str, Any],
    ) -> Upid | None:
        """The lifecycle call; with pvesh it returns once the task has ended."""
        try:
            spec = spec_for(kind, action)
        except UnsupportedAction as exc:
            raise PveError(ErrorClass.PERMANENT, str(exc), method="POST", sent=False) from None
        req = wire.dispatch_request(node, spec, vmid, params)
        result = await self._call(req.method, req.path, req.template, req.form, action=str(action))
        return wire.dispatch_result(
            upid_text(result, cli=self._backend in CLI_BACKENDS),
            method=req.method,
            path=req.path,
            action=str(action),
        )

    async def task_status(self, upid: Upid) -> TaskStatus:
        path = wire.task_path(upid, "status")
        data = await self._call("GET", path, wire.EP_TASK_STATUS, {})
        return self._decoded(path, lambda: wire.task_status_from(data, upid))

    async def task_log(self, upid: Upid, *, start: int = 0, limit: int = 50) -> list[str]:
        path = wire.task_path(upid, "log")
        data = await self._call("GET", path, wire.EP_TASK_LOG, {"start": start, "limit": limit})
        return self._decoded(path, lambda: wire.task_log_from(data))

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
        """The task list; proxmoxer returns only ``data``, so ``total`` is unknown (None)
        and a full page means "page on" (reference §13.9)."""
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
        data = await self._call("GET", path, wire.EP_TASKS, query)
        return self._decoded(path, lambda: wire.task_list_from(data, None))

    async def stop_task(self, upid: Upid) -> None:
        await self._call("DELETE", wire.task_path(upid), wire.EP_TASK, {})

    async def guest_status(self, node: str, kind: GuestKind, vmid: int) -> GuestStatus:
        path = wire.guest_path(node, kind, vmid, "status/current")
        data = await self._call("GET", path, wire.EP_GUEST_STATUS, {})
        return self._decoded(path, lambda: wire.guest_status_from(data, vmid))

    async def guest_config(
        self, node: str, kind: GuestKind, vmid: int, *, current: bool = False
    ) -> GuestConfig:
        path = wire.guest_path(node, kind, vmid, "config")
        data = await self._call(
            "GET", path, wire.EP_GUEST_CONFIG, {"current": 1} if current else {}
        )
        return self._decoded(path, lambda: wire.guest_config_from(data))

    async def cluster_resources(self) -> list[ClusterResource]:
        path = "/cluster/resources"
        data = await self._call("GET", path, wire.EP_RESOURCES, {"type": "vm"})
        return self._decoded(path, lambda: wire.cluster_resources_from(data))

    async def node_guests(
        self, node: str, kind: GuestKind, *, only: Collection[int] | None = None
    ) -> list[GuestStatus]:
        """``GET /nodes/{node}/qemu|lxc`` (live, unlike ``/cluster/resources``)."""
        path = wire.node_guests_path(node, kind)
        data = await self._call("GET", path, wire.EP_NODE_GUESTS, {})
        return self._decoded(path, lambda: wire.node_guests_from(data, only))

    async def set_tags(self, node: str, kind: GuestKind, vmid: int, tags: str, digest: str) -> None:
        path = wire.guest_path(node, kind, vmid, "config")
        await self._call("PUT", path, wire.EP_GUEST_CONFIG, {"tags": tags, "digest": digest})

    async def node_status(self, node: str) -> Mapping[str, Any]:
        path = f"/nodes/{node}/status"
        data = await self._call("GET", path, wire.EP_NODE_STATUS, {})
        return self._decoded(path, lambda: wire.mapping_from(data, "node status"))

    async def version(self) -> Mapping[str, Any]:
        data = await self._call("GET", "/version", wire.EP_VERSION, {})
        return self._decoded("/version", lambda: wire.mapping_from(data, "version"))

    async def nodes(self) -> list[NodeEntry]:
        data = await self._call("GET", "/nodes", wire.EP_NODES, {})
        return self._decoded("/nodes", lambda: wire.nodes_from(data))

    async def node_config(self, node: str) -> tuple[str, str]:
        path = f"/nodes/{node}/config"
        data = await self._call("GET", path, wire.EP_NODE_CONFIG, {})
        return self._decoded(path, lambda: wire.node_config_from(data))

    async def set_node_description(self, node: str, description: str, digest: str) -> None:
        await self._call(
            "PUT",
            f"/nodes/{node}/config",
            wire.EP_NODE_CONFIG,
            {"description": description, "digest": digest},
        )

    async def node_time(self, node: str) -> float:
        path = f"/nodes/{node}/time"
        data = await self._call("GET", path, wire.EP_NODE_TIME, {})
        return self._decoded(path, lambda: wire.node_time_from(data))

    async def permissions(self) -> dict[str, frozenset[str]]:
        path = "/access/permissions"
        data = await self._call("GET", path, wire.EP_PERMISSIONS, {})
        return self._decoded(path, lambda: wire.permissions_from(data))

    async def ha_resource(self, sid: str) -> Mapping[str, Any] | None:
        path = f"/cluster/ha/resources/{sid}"
        try:
            data = await self._call("GET", path, wire.EP_HA_RESOURCE, {})
        except PveError as err:
            if wire.is_no_such_ha_resource(err):
                return None
            raise
        return self._decoded(path, lambda: wire.mapping_from(data, "HA resource"))

    async def ha_set_state(self, sid: str, state: str) -> None:
        await self._call(
            "PUT", f"/cluster/ha/resources/{sid}", wire.EP_HA_RESOURCE, {"state": state}
        )

    # --- calls -------------------------------------------------------------------------------

    def _decoded(self, path: str, decode: Callable[[], _T]) -> _T:
        try:
            return decode()
        except (ValueError, TypeError, KeyError) as exc:
            raise wire.protocol_error(
                f"unreadable answer: {exc}", method="GET", path=path, status=200
            ) from None

    async def _call(
        self,
        method: str,
        path: str,
        template: str,
        params: Mapping[str, Any],
        *,
        action: str | None = None,
    ) -> Any:
        """Run one proxmoxer call in the pool; map every failure to :class:`PveError`.

        ``action`` (lifecycle calls only) goes to the classifier with any failure.

        The error is raised outside the ``except`` blocks on purpose: a proxmoxer or requests
        exception's traceback holds the HTTP response and its socket, and an error kept as
        ``__context__`` would keep that connection open for as long as the error lives.
        """
        query, form = (params, None) if method in ("GET", "DELETE") else (None, params)
        reason = wire.unsendable(path, query, form)
        if reason is not None:
            raise wire.not_sent(method, template, reason)
        if self._closed:
            raise PveError(
                ErrorClass.TRANSIENT,
                "the Proxmox client is closed",
                method=method,
                path=path,
                sent=False,
            )
        loop = asyncio.get_running_loop()
        code = "error"
        started = time.perf_counter()
        error: PveError
        try:
            async with asyncio.timeout(self._timeout + _GRACE):
                result = await loop.run_in_executor(
                    self._pool, self._blocking, method, path, dict(params)
                )
            code = "200"
            return result
        except ResourceException as exc:
            answer = cli_answer(exc) if self._cli_write(method) else None
            if answer is not None:
                code = "200"
                return answer
            code = str(exc.status_code)
            error = self._resource_error(exc, method, path, action)
        except ConnectFailed as exc:
            error = self._failure(exc.cause, method, path, sent=False, action=action)
        except TimeoutError as exc:
            error = self._failure(exc, method, path, sent=True, action=action)
        except Exception as exc:  # noqa: BLE001 — proxmoxer and its transports raise anything
            error = self._failure(exc, method, path, sent=True, action=action)
        finally:
            self._observe(method, template, code, time.perf_counter() - started)
        raise error

    def _blocking(self, method: str, path: str, params: dict[str, Any]) -> Any:
        """In a pool thread: connect on first use, then one proxmoxer request."""
        with self._api_lock:
            if self._api is None:
                try:
                    self._api = self._connect()
                except Exception as exc:  # re-raised as _ConnectFailed, mapped by _call
                    raise ConnectFailed(exc) from exc
                self._user = _ticket_user(self._api) or self._user
            api = self._api
        resource = api(path.lstrip("/"))
        return getattr(resource, method.lower())(**params)

    def _observe(self, method: str, template: str, code: str, seconds: float) -> None:
        logger.debug(
            "pve.request",
            extra={
                "method": method,
                "endpoint": template,
                "code": code,
                "seconds": seconds,
                "backend": self._backend,
            },
        )
        if self._on_request is None:
            return
        try:
            self._on_request(method, template, code, seconds)
        except Exception:
            logger.exception("pve.request_hook_failed", extra={"endpoint": template})

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def _cli_write(self, method: str) -> bool:
        return self._backend in CLI_BACKENDS and method != "GET"

    def _resource_error(
        self, exc: ResourceException, method: str, path: str, action: str | None
    ) -> PveError:
        return resource_error(
            exc,
            method,
            path,
            cli=self._backend in CLI_BACKENDS,
            redact=self._redact,
            action=action,
        )

    def _failure(
        self,
        exc: BaseException,
        method: str,
        path: str,
        *,
        sent: bool,
        action: str | None = None,
    ) -> PveError:
        err = failure(
            exc,
            method,
            path,
            sent=sent,
            limit=self._timeout,
            local=self._backend == "local",
            redact=self._redact,
            action=action,
        )
        logger.info(
            "pve.no_answer",
            extra={
                "method": method,
                "sent": err.sent,
                "error_class": str(err.error_class),
                "backend": self._backend,
                "reason": err.reason,
            },
        )
        return err


def _ticket_user(api: Any) -> str | None:
    """The user id of proxmoxer's login ticket (https with a password), else ``None``."""
    get_tokens = getattr(api, "get_tokens", None)
    if not callable(get_tokens):
        return None
    ticket, _csrf = get_tokens()
    return ticket_userid(ticket) if isinstance(ticket, str) else None
