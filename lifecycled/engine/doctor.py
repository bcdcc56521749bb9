"""``lifecycled doctor``: check a set-up before it goes live, one finding per line.

Every check reads; none writes (the journal is opened read-only, Proxmox is only sent GETs).
The checks run in the order an operator fixes things — config, journal, Proxmox reachable,
TLS trust, token, privileges, node, clock — and a check whose premise failed is *skipped*
rather than reported as a second failure.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from lifecycled.config import Settings, is_loopback
from lifecycled.domain.privileges import verdicts
from lifecycled.errors import JournalError, JournalOutdated, LifecycledError, PveError
from lifecycled.pve.port import PveClient

#: Largest accepted difference between this host's clock and the node's (seconds).
MAX_CLOCK_SKEW = 5.0


class Status(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"
    SKIP = "skip"


@attrs.frozen(kw_only=True)
class Finding:
    """One line of the report."""

    check: str
    status: Status
    detail: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.value, "detail": self.detail} | (
            {"hint": self.hint} if self.hint else {}
        )


def ok(check: str, detail: str) -> Finding:
    return Finding(check=check, status=Status.OK, detail=detail)


def bad(check: str, detail: str, hint: str) -> Finding:
    return Finding(check=check, status=Status.FAIL, detail=detail, hint=hint)


def skipped(check: str, why: str) -> Finding:
    return Finding(check=check, status=Status.SKIP, detail=f"skipped: {why}")


async def journal_findings(settings: Settings) -> list[Finding]:
    """The journal file: present (or creatable), writable, sound, a schema this build reads."""
    from lifecycled.journal import Journal

    db = settings.db
    if not db.exists():
        parent = db.parent if str(db.parent) else Path()
        if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return [ok("journal", f"{db} does not exist yet; the daemon creates it at start")]
        return [
            bad(
                "journal",
                f"no journal at {db} and its directory {parent} is missing or not writable",
                "check db in the config (or --db); the package creates /var/lib/lifecycled",
            )
        ]
    out: list[Finding] = []
    unwritable = [p for p in (db, db.parent) if not os.access(p, os.W_OK)]
    if unwritable:
        out.append(
            bad(
                "journal",
                f"{unwritable[0]} is not writable by this user",
                "run doctor as the service user: sudo -u lifecycled lifecycled doctor",
            )
        )
    else:
        out.append(ok("journal", f"{db} present and writable"))
    try:
        async with await Journal.open(db, create=False, readonly=True) as journal:
            problems = await journal.integrity_check()
            version, known = journal.schema_version, journal.known_schema_version
    except JournalOutdated as old:
        detail = f"version {old.version} (this lifecycled knows {old.known})"
        out.append(ok("journal schema", f"{detail}; the daemon migrates it at start"))
        return out
    except JournalError as exc:
        out.append(bad("journal schema", str(exc), "restore a backup (lifecycled db backup)"))
        return out
    if problems != ["ok"]:
        out.append(
            bad(
                "journal integrity",
                "; ".join(problems[:3]),
                "stop the daemon and restore the newest backup",
            )
        )
    else:
        out.append(ok("journal integrity", "integrity_check ok"))
    out.append(ok("journal schema", f"version {version} (this lifecycled knows {known})"))
    return out


def lock_finding(db: Path) -> Finding:
    """Whether a daemon already runs on this journal (its ``<db>.lock``): a second one would
    exit at start."""
    from lifecycled.journal.daemonlock import holder, lock_path

    pid = holder(db)
    if pid is None:
        return ok("daemon lock", f"no daemon holds {lock_path(db)}")
    return bad(
        "daemon lock",
        f"a lifecycled daemon (pid {pid}) is running on {db}",
        "another `lifecycled run` on this journal would exit at once; if it is this node's "
        "service, check it with systemctl status lifecycled",
    )


def _tls_text(err: PveError) -> bool:
    text = err.text
    return "TLS" in text or "SSL" in text or "certificate" in text.lower()


def _trust(settings: Settings) -> str:
    if settings.pve_fingerprint:
        return "the pinned certificate fingerprint"
    if settings.pve_ca_file is not None:
        return f"the CA in {settings.pve_ca_file}"
    return "the system's CA store"


async def proxmox_findings(
    settings: Settings, pve: PveClient, now: Callable[[], float]
) -> list[Finding]:
    """Reachable, TLS trust, token, privileges, node, clock: in that order."""
    later = ("token", "privileges", "node", "clock")
    https = urlsplit(settings.pve_url).scheme == "https"
    out: list[Finding] = []
    try:
        version = await pve.version()
    except PveError as err:
        if err.status is None and not _tls_text(err):
            out.append(
                bad(
                    "proxmox reachable",
                    f"{settings.pve_url}: {err.text}",
                    "check pve_url, that pveproxy runs (systemctl status pveproxy) and the firewall",
                )
            )
            out.append(skipped("tls", "Proxmox unreachable"))
            out += [skipped(name, "Proxmox unreachable") for name in later]
            return out
        out.append(ok("proxmox reachable", f"{settings.pve_url} answers"))
        if err.status is None:
            out.append(
                bad(
                    "tls",
                    f"the certificate is not trusted: {err.text}",
                    "set pve_ca_file = /etc/pve/pve-root-ca.pem, or pin pve_fingerprint "
                    "(pvenode cert info)",
                )
            )
            out += [skipped(name, "TLS not trusted") for name in later]
            return out
        out.append(ok("tls", f"verified against {_trust(settings)}") if https else _plain(settings))
        if err.status == 401:
            out.append(
                bad(
                    "token",
                    "Proxmox refused the credentials (401)",
                    "check pve_token_file: USER@REALM!TOKENID=SECRET, the token not expired "
                    "(pveum user token list USER)",
                )
            )
        else:
            out.append(bad("token", err.text, "check the token and the Proxmox log"))
        out += [skipped(name, "no valid token") for name in later[1:]]
        return out
    out.append(
        ok("proxmox reachable", f"{settings.pve_url}: Proxmox VE {version.get('version', '?')}")
    )
    if not https:
        out.append(_plain(settings))
    elif settings.pve_insecure:
        out.append(
            bad(
                "tls",
                "certificate verification is disabled (pve_insecure)",
                "set pve_ca_file = /etc/pve/pve-root-ca.pem or pin pve_fingerprint",
            )
        )
    else:
        out.append(ok("tls", f"verified against {_trust(settings)}"))
    out.append(ok("token", f"accepted for {pve.user}"))
    out += await _privileges(settings, pve)
    out += await _node_and_clock(settings, pve, now)
    return out


def _plain(settings: Settings) -> Finding:
    host = urlsplit(settings.pve_url).hostname or ""
    if is_loopback(host):
        return ok("tls", "plain HTTP on loopback (the simulator)")
    return bad("tls", f"plain HTTP to {host}", "use https:// with pve_ca_file or pve_fingerprint")


async def _privileges(settings: Settings, pve: PveClient) -> list[Finding]:
    try:
        perms = await pve.permissions()
    except PveError as err:
        return [bad("privileges", f"cannot read /access/permissions: {err.text}", "")]
    out: list[Finding] = []
    for v in verdicts(perms, node=settings.primary_node):
        name = f"privileges: {v.subject}"
        if v.missing:
            out.append(
                bad(
                    name,
                    f"missing {', '.join(v.missing)}",
                    f"grant {', '.join(v.missing)} on / to {pve.user} "
                    "(pveum acl modify / --tokens … --roles …)",
                )
            )
        elif v.partial:
            out.append(
                ok(name, f"{', '.join(v.needed)} (only on some paths: {', '.join(v.partial)})")
            )
        else:
            out.append(ok(name, ", ".join(v.needed)))
    return out


async def _node_and_clock(
    settings: Settings, pve: PveClient, now: Callable[[], float]
) -> list[Finding]:
    try:
        nodes = await pve.nodes()
    except PveError as err:
        return [bad("node", f"cannot list nodes: {err.text}", ""), skipped("clock", "no node")]
    names = sorted(n.node for n in nodes)
    entry = next((n for n in nodes if n.node == settings.primary_node), None)
    if entry is None:
        return [
            bad(
                "node",
                f"no node {settings.primary_node!r} in the cluster (nodes: {', '.join(names) or 'none'})",
                "set node to this host's Proxmox node name (hostname -s)",
            ),
            skipped("clock", "unknown node"),
        ]
    if entry.status != "online":
        return [
            bad(
                "node",
                f"{settings.primary_node} is {entry.status}",
                "check the node (pvecm status)",
            ),
            skipped("clock", "node not online"),
        ]
    out = [ok("node", f"{settings.primary_node} is online (cluster nodes: {', '.join(names)})")]
    try:
        sent = now()
        node_time = await pve.node_time(settings.primary_node)
        mine = (sent + now()) / 2
    except PveError as err:
        return [*out, bad("clock", f"cannot read the node's time: {err.text}", "")]
    skew = node_time - mine
    if abs(skew) > MAX_CLOCK_SKEW:
        out.append(
            bad(
                "clock",
                f"this host's clock is {skew:+.1f} s off the node's (limit ±{MAX_CLOCK_SKEW:g} s)",
                "run time synchronisation (chrony) on both",
            )
        )
    else:
        out.append(ok("clock", f"skew {skew:+.1f} s (limit ±{MAX_CLOCK_SKEW:g} s)"))
    return out


async def diagnose(
    settings: Settings,
    make_client: Callable[[Settings], PveClient],
    *,
    now: Callable[[], float] = time.time,
) -> list[Finding]:
    """Every check after the config's, in order."""
    out = await journal_findings(settings)
    out.append(lock_finding(settings.db))
    try:
        pve = make_client(settings)
    except LifecycledError as exc:
        return [
            *out,
            bad("proxmox credentials", str(exc), "check pve_token_file in the config"),
        ]
    try:
        out += await proxmox_findings(settings, pve, now)
    finally:
        await pve.close()
    return out
