"""A raw HTTP caller for the simulator (tests, benchmarks): status, reason and JSON as sent.

Unlike lifecycled's Proxmox client it interprets nothing, so tests can pin the wire format.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp
import attrs
from multidict import CIMultiDictProxy


@attrs.frozen(kw_only=True)
class RawAnswer:
    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    text: str

    @property
    def json(self) -> Any:
        """The parsed body, or None when it is empty or not JSON."""
        try:
            return json.loads(self.text) if self.text else None
        except ValueError:
            return None

    @property
    def data(self) -> Any:
        body = self.json
        return body.get("data") if isinstance(body, dict) else None

    @property
    def errors(self) -> dict[str, str] | None:
        body = self.json
        return body.get("errors") if isinstance(body, dict) else None

    @property
    def message(self) -> str | None:
        body = self.json
        return body.get("message") if isinstance(body, dict) else None


class RawClient:
    """``await client.post("/nodes/pve1/qemu/100/status/start")`` → :class:`RawAnswer`."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | bool | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        headers = {"Authorization": f"PVEAPIToken={token}"} if token else {}
        self.session = aiohttp.ClientSession(headers=headers)
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context

    async def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
    ) -> RawAnswer:
        """One request; params go in the query for GET and DELETE (Proxmox refuses a body
        there, §13.13), form-encoded in the body otherwise."""
        url = self.base + ("/api2/json" + path if path.startswith("/") else path)
        if path.startswith("/_sim"):
            url = self.base + path
        kwargs: dict[str, Any] = {"headers": dict(headers or {}), "ssl": self._ssl}
        if cookies:
            kwargs["headers"]["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        if json_body is not None:
            kwargs["json"] = json_body
        elif params is not None and method.upper() in ("GET", "DELETE"):
            kwargs["params"] = {k: str(v) for k, v in params.items()}
        elif params is not None:
            kwargs["data"] = {k: str(v) for k, v in params.items()}
        async with self.session.request(method, url, **kwargs) as resp:
            text = await resp.text()
            return RawAnswer(
                status=resp.status, reason=resp.reason or "", headers=resp.headers, text=text
            )

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> RawAnswer:
        return await self.call("GET", path, params)

    async def post(self, path: str, params: Mapping[str, Any] | None = None) -> RawAnswer:
        return await self.call("POST", path, params)

    async def put(self, path: str, params: Mapping[str, Any] | None = None) -> RawAnswer:
        return await self.call("PUT", path, params)

    async def delete(self, path: str, params: Mapping[str, Any] | None = None) -> RawAnswer:
        return await self.call("DELETE", path, params)

    async def wait_task(self, upid: str, within: float = 5.0) -> dict[str, Any]:
        """Poll the task's status on its own node until it has stopped; the status ``data``."""
        node = upid.split(":")[1]
        async with asyncio.timeout(within):
            while True:
                answer = await self.get(f"/nodes/{node}/tasks/{upid}/status")
                data = answer.data
                if answer.status != 200 or not isinstance(data, dict):
                    raise RuntimeError(f"task status: {answer.status} {answer.reason}")
                if data.get("status") == "stopped":
                    return data
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
