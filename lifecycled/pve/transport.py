"""One HTTP exchange with pveproxy: the session, timeouts, the envelope, failure mapping.

Owned by :class:`lifecycled.pve.http.HttpPveClient`; knows nothing of credentials except
the secrets it must keep out of error texts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
import attrs

from lifecycled.domain.classify import ErrorClass
from lifecycled.errors import PveError
from lifecycled.pve import wire
from lifecycled.pve.port import RequestHook
from lifecycled.pve.timeouts import Timeouts

logger = logging.getLogger("lifecycled.pve.http")

_REDACTED = "***"
#: Seconds an idle connection is kept for reuse.
_KEEPALIVE = 4.0
#: The media type of a form body (what aiohttp's ``FormData`` sends for text fields).
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


@attrs.frozen(kw_only=True)
class Reply:
    """A status line and body, before any interpretation."""

    status: int
    reason: str
    body: bytes


def _all_text(form: Mapping[str, Any]) -> bool:
    return all(type(k) is str and type(v) is str for k, v in form.items())


def form_body(form: Mapping[str, str]) -> bytes:
    """A form of text fields as the bytes aiohttp's ``FormData`` would send for it
    (``urlencode`` of its fields in order, UTF-8): encoded here, once, so that aiohttp
    does not look the mapping up in its payload registry and build a ``FormData`` per
    request."""
    return urlencode(list(form.items()), doseq=True, encoding="utf-8").encode()


class Transport:
    """One lazily created :class:`aiohttp.ClientSession` and the request/answer mapping."""

    def __init__(
        self,
        api: str,
        *,
        ssl: Any,
        timeouts: Timeouts,
        on_request: RequestHook | None,
        secrets: Callable[[], Iterable[str]],
    ) -> None:
        self._api = api
        self._ssl = ssl
        self._timeouts = timeouts
        self._on_request = on_request
        self._secrets = secrets
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def session(self) -> aiohttp.ClientSession:
        """The session, created on first use inside the running loop."""
        if self._closed:
            # A late call during shutdown must not open a session nobody will close.
            raise PveError(
                ErrorClass.TRANSIENT, "the Proxmox client is closed", method="", sent=False
            )
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Idle connections are dropped after a few seconds, so a write rarely meets a
                # connection the server closed meanwhile (that reads as "no answer after
                # sending": ambiguous, and costs a task-list reconciliation).
                connector=aiohttp.TCPConnector(ssl=self._ssl, keepalive_timeout=_KEEPALIVE),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"Accept": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        """Close the session (idempotent); later calls fail with a transient error."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(
        self,
        method: str,
        path: str,
        template: str,
        *,
        params: Mapping[str, Any] | None,
        data: Mapping[str, str] | None,
        headers: Mapping[str, str],
        seconds: float,
        action: str | None = None,
    ) -> Reply:
        """One HTTP exchange; no answer → :class:`PveError` (status ``None``); a request
        that cannot be encoded → :class:`RequestNotSent` (nothing left this process).

        ``action``: the op's action for a lifecycle call, so the error is classified once,
        with everything the classifier needs.
        """
        self.check_encodable(method, path, template, params=params, data=data)
        session = self.session()
        body: bytes | dict[str, Any] | None = None
        if data is not None:
            if _all_text(data):
                body = form_body(data)
                headers = {**headers, "Content-Type": FORM_CONTENT_TYPE}
            else:
                body = dict(data)
        code = "error"
        started = time.perf_counter()
        error: PveError
        try:
            async with session.request(
                method,
                self._api + path,
                params=dict(params) if params else None,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds, sock_connect=self._timeouts.connect),
                allow_redirects=False,
            ) as resp:
                code = str(resp.status)
                body = await resp.read()
                return Reply(status=resp.status, reason=resp.reason or "", body=body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            code = "error"
            error = self.no_answer(exc, method, path, template, seconds, action=action)
        finally:
            self.observe(method, template, code, time.perf_counter() - started)
        # Raised outside the except block: no __context__ keeping aiohttp's connection objects.
        raise error

    def check_encodable(
        self,
        method: str,
        path: str,
        template: str,
        *,
        params: Mapping[str, Any] | None,
        data: Mapping[str, str] | None,
    ) -> None:
        """Refuse, before any connection is made, a request that cannot go out exactly as
        built (:func:`wire.unsendable`), or whose form aiohttp would not encode: it raises
        :class:`RequestNotSent`, provably unsent.

        A form of text keys and values only (the common case) is not encoded on trial:
        urlencoding text that :func:`wire.unsendable` found UTF-8 encodable cannot fail."""
        reason = wire.unsendable(path, params, data)
        if reason is None and data is not None and not _all_text(data):
            try:
                aiohttp.FormData(dict(data))()
            except (ValueError, TypeError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            raise wire.not_sent(method, template, reason)

    def observe(self, method: str, template: str, code: str, seconds: float) -> None:
        if logger.isEnabledFor(logging.DEBUG):  # its fields are not built for nothing
            logger.debug(
                "pve.request",
                extra={"method": method, "endpoint": template, "code": code, "seconds": seconds},
            )
        if self._on_request is None:
            return
        try:
            self._on_request(method, template, code, seconds)
        except Exception:
            # A broken metrics hook must not turn an answered call (maybe a UPID) into a failure.
            logger.exception("pve.request_hook_failed", extra={"endpoint": template})

    def no_answer(
        self,
        exc: BaseException,
        method: str,
        path: str,
        template: str,
        seconds: float,
        *,
        action: str | None = None,
    ) -> PveError:
        sent = True
        if isinstance(exc, aiohttp.ServerFingerprintMismatch):
            reason, sent = (
                "TLS: the server certificate does not match the pinned fingerprint",
                False,
            )
        elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
            reason, sent = f"TLS: certificate verification failed: {exc.certificate_error}", False
        elif isinstance(exc, aiohttp.ClientConnectorError):
            reason, sent = f"cannot connect: {exc.strerror or exc}", False
        elif isinstance(exc, aiohttp.ConnectionTimeoutError):
            reason, sent = f"connect timed out after {self._timeouts.connect:g} s", False
        elif isinstance(exc, TimeoutError):
            reason = f"no answer within {seconds:g} s"
        elif isinstance(exc, aiohttp.ServerDisconnectedError):
            reason = "the server closed the connection before answering"
        else:
            reason = f"connection lost: {type(exc).__name__}: {exc}"
        err = wire.http_error(
            None, self.redact(reason), method=method, path=path, sent=sent, action=action
        )
        logger.info(
            "pve.no_answer",
            extra={
                "method": method,
                "endpoint": template,
                "sent": sent,
                "error_class": str(err.error_class),
                "reason": err.reason,
            },
        )
        return err

    def envelope(
        self, reply: Reply, method: str, path: str, *, action: str | None = None
    ) -> Mapping[str, Any]:
        body: Any = None
        readable = True
        if reply.body:
            try:
                body = json.loads(reply.body)
            except (ValueError, UnicodeDecodeError):
                readable = False
        if not 200 <= reply.status < 300:
            obj = body if isinstance(body, Mapping) else {}
            reason = self.redact(wire.error_text(reply.status, reply.reason, obj.get("message")))
            errors = {k: self.redact(v) for k, v in wire.errors_of(obj.get("errors")).items()}
            err = wire.http_error(
                reply.status, reason, method=method, path=path, errors=errors, action=action
            )
            logger.debug(
                "pve.http_error",
                extra={
                    "method": method,
                    "status": reply.status,
                    "error_class": str(err.error_class),
                    "reason": reason,
                },
            )
            raise err
        if not readable or not isinstance(body, Mapping) or "data" not in body:
            raise wire.protocol_error(
                'the answer is not a Proxmox JSON envelope {"data": …}',
                method=method,
                path=path,
                status=reply.status,
                action=action,
            )
        return body

    def listing(
        self, reply: Reply, method: str, path: str, vmids: Collection[int]
    ) -> Mapping[str, Any]:
        """:meth:`envelope` of a node's guest listing whose caller reads only ``vmids``:
        ``{"data": [their items]}`` decoded item by item (:func:`wire.listed_items`) when
        the body allows it, else the whole envelope."""
        if 200 <= reply.status < 300:
            items = wire.listed_items(reply.body, vmids)
            if items is not None:
                return {"data": items}
        return self.envelope(reply, method, path)

    def redact(self, text: str) -> str:
        """``text`` with every current secret replaced by ``***``."""
        for secret in self._secrets():
            if secret and secret in text:
                text = text.replace(secret, _REDACTED)
        return text
