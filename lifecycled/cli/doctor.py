"""``lifecycled doctor``: check the set-up (config, journal, Proxmox, token, privileges, node, clock)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

import typer

from lifecycled.cli._app import EXIT_FAILED, EXIT_OK, app, print_json
from lifecycled.cli.options import SettingsInput, with_settings
from lifecycled.config import Scope, config_file_for
from lifecycled.errors import LifecycledError

_MARK = {"ok": "✓", "fail": "✗", "skip": "-"}


@app.command()
@with_settings(Scope.JOURNAL, Scope.NODE, Scope.PROXMOX)
def doctor(
    given: SettingsInput,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check the set-up before it goes live; one line per check, exit 1 on any ✗.

    Reads only: the journal is opened read-only and Proxmox is sent GETs. Run it as the service user (sudo -u lifecycled lifecycled doctor) so file rights are checked as the daemon has them.
    """
    from lifecycled.engine.doctor import Finding, bad, diagnose, ok
    from lifecycled.engine.runtime import build_pve_client
    from lifecycled.metrics import Metrics

    findings: list[Finding]
    try:
        settings = given.load()
    except LifecycledError as exc:
        findings = [bad("config", str(exc), "fix the file or flag named above")]
    else:
        used = config_file_for(given.config, os.environ)
        where = used if used is not None else "no config file: defaults, environment and flags"
        findings = [ok("config", f"valid ({where})")]
        findings += asyncio.run(diagnose(settings, lambda s: build_pve_client(s, Metrics())))
    failed = any(f.status.value == "fail" for f in findings)
    if as_json:
        print_json({"ok": not failed, "checks": [f.to_dict() for f in findings]})
    else:
        for f in findings:
            line = f"{_MARK[f.status.value]} {f.check}: {f.detail}"
            if f.hint:
                line += f"\n    hint: {f.hint}"
            sys.stdout.write(line + "\n")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)
