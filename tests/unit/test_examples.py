"""The deployable examples (examples/): they load, use real names, and stay hardened and consistent."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import attrs
import pytest
import typer
from prometheus_client.metrics import MetricWrapperBase

from lifecycled.config import Settings, is_loopback, load_settings
from lifecycled.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TOML = EXAMPLES / "lifecycled.toml"
UNIT = EXAMPLES / "lifecycled.service"
CONTAINERFILE = EXAMPLES / "Containerfile"
DASHBOARD = EXAMPLES / "grafana-dashboard.json"
ALERTS = EXAMPLES / "alerts.yml"
CLIENT = EXAMPLES / "client.py"

#: Settings the example sets to production values on purpose; every other one is the default.
DELIBERATE_OVERRIDES = {"db", "pve_token_file", "pve_ca_file", "api_token_file"}
#: Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
#: Series Prometheus itself generates per target (not lifecycled's).
PROMETHEUS_SERIES = {"up": frozenset[str]()}
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"and", "or", "unless", "offset", "bool"}
)
CREDENTIALS_DIR = "/run/credentials/lifecycled.service"


# --- helpers ----------------------------------------------------------------------------------


def metric_catalogue() -> dict[str, frozenset[str]]:
    """Every series name a ``Metrics()`` registry can expose, with the labels it carries."""
    metrics = Metrics()
    # Label names per family; prometheus_client exposes them only as ``_labelnames``.
    labels = {
        family.name: frozenset(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
        for family in wrapper.describe()
    }
    out: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        # Collectors that are not metric objects (process_*, python_info): their samples' labels.
        own = labels.get(family.name, frozenset(k for x in family.samples for k in x.labels))
        if family.type == "counter":
            out[family.name + "_total"] = own
        elif family.type == "histogram":
            out[family.name + "_bucket"] = own | {"le"}
            out[family.name + "_sum"] = own
            out[family.name + "_count"] = own
        else:
            out[family.name] = own
    return out


def _strip_promql(expr: str) -> str:
    expr = re.sub(r"#[^\n]*", " ", expr)  # comments
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels excluded)."""
    text = _strip_promql(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        if match.group(2) or match.group(1) in PROMQL_KEYWORDS:
            continue  # a function call or a keyword
        names.add(match.group(1))
    return names


def label_problems(expr: str, catalogue: dict[str, frozenset[str]]) -> list[str]:
    """Label names in selectors and grouping clauses that the metrics involved do not carry."""
    text = _strip_promql(expr)
    known = {**catalogue, **PROMETHEUS_SERIES}
    problems: list[str] = []
    for name, matchers in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", text):
        labels = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers)
        allowed = known.get(name, frozenset()) | TARGET_LABELS
        problems.extend(
            f"{name} has no label {label!r}" for label in labels if label not in allowed
        )
    used = metric_names(expr)
    available = TARGET_LABELS.union(*(known.get(n, frozenset()) for n in used))
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        grouped = [part.strip() for part in clause.split(",") if part.strip()]
        problems.extend(
            f"grouping label {label!r} is on none of {sorted(used)}"
            for label in grouped
            if label not in available
        )
    return problems


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of the dashboard: panel targets (rows included) and variables."""
    queries: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            queries.extend(target["expr"] for target in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", text)
        if inner:
            queries.append(inner.group(1))
    return queries


def alert_rules(text: str) -> list[dict[str, str]]:
    """The rules of a Prometheus rules file, read line by line (no YAML library needed).

    Handles what the example uses: ``- alert:`` items, ``key: value`` fields, ``labels:`` and
    ``annotations:`` maps one level deeper, and ``expr: |`` block scalars.
    """
    rules: list[dict[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        start = re.match(r"^(\s*)- alert:\s*(\S+)\s*$", line)
        if start is None:
            i += 1
            continue
        base = len(start.group(1))
        rule = {"alert": start.group(2)}
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base
        ):
            field = re.match(r"^(\s*)([A-Za-z_]+):\s*(.*)$", lines[i])
            i += 1
            if field is None or field.group(1).lstrip().startswith("#"):
                continue
            indent, key, value = len(field.group(1)), field.group(2), field.group(3).strip()
            if value in ("|", ">", "|-", ">-"):
                block = []
                while i < len(lines) and (
                    not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
                ):
                    block.append(lines[i])
                    i += 1
                value = textwrap.dedent("\n".join(block)).strip()
            elif len(value) >= 2 and value[0] == value[-1] == '"':
                value = json.loads(value)
            rule.setdefault(key, value)
        rules.append(rule)
    return rules


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section → directive → values (continuations joined, comments gone)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = re.sub(r"\\\n\s*", " ", text)
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a directive: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def containerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the final stage and earlier ones, in order."""
    logical = re.sub(r"\\\n", " ", text)
    out = []
    for raw in logical.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def run_option_names() -> dict[str, str]:
    """``--flag`` → parameter name for every option of ``lifecycled run`` (its click command)."""
    from lifecycled.cli import _load_commands
    from lifecycled.cli._app import app

    _load_commands()
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    out: dict[str, str] = {}
    for param in group.commands["run"].params:
        assert param.name is not None
        out.update(dict.fromkeys([*param.opts, *param.secondary_opts], param.name))
    assert "--config" in out and "--pve-token-file" in out
    return out


def flags_to_settings(argv: list[str]) -> tuple[Path | None, dict[str, Any]]:
    """The ``--config`` path and the settings flags of a ``run`` argument list."""
    names = run_option_names()
    config: Path | None = None
    flags: dict[str, Any] = {}
    args = iter(argv)
    for arg in args:
        assert arg in names, f"{arg} is not an option of `lifecycled run`"
        value = next(args)
        if names[arg] == "config":
            config = Path(value)
        else:
            flags[names[arg]] = value
    return config, flags


def load_client() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lifecycled_example_client", CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- configuration ----------------------------------------------------------------------------


def test_toml_loads_with_load_settings() -> None:
    """examples/lifecycled.toml loads through load_settings with no flags and no environment."""
    settings = load_settings({}, env={}, config_file=TOML)
    assert settings.db == Path("/var/lib/lifecycled/lifecycled.sqlite3")
    assert is_loopback(settings.listen_host)


def test_toml_names_every_setting() -> None:
    """Every Settings option appears in the TOML, set or commented out, and nothing else does."""
    text = TOML.read_text(encoding="utf-8")
    active = set(tomllib.loads(text))
    commented = set(re.findall(r"^#\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    fields = {f.name for f in attrs.fields(Settings)}
    assert active | commented == fields
    assert not active & commented


def test_toml_values_are_the_defaults_except_deliberate_ones() -> None:
    """Set values equal the defaults, except the production paths that are overridden on purpose."""
    loaded = attrs.asdict(load_settings({}, env={}, config_file=TOML), recurse=False)
    defaults = attrs.asdict(Settings(), recurse=False)
    assert {name for name in defaults if loaded[name] != defaults[name]} == DELIBERATE_OVERRIDES


# --- dashboard and alerts ---------------------------------------------------------------------


def test_dashboard_parses_and_is_importable() -> None:
    """The dashboard is JSON with a DS_PROMETHEUS input, every query on it, unique ids, 24 columns."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_uses_only_existing_metrics_and_labels() -> None:
    """Every metric and label the dashboard queries exists in lifecycled.metrics.Metrics."""
    catalogue = metric_catalogue()
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = dashboard_queries(dashboard)
    used = set().union(*(metric_names(q) for q in queries))
    assert used - catalogue.keys() <= PROMETHEUS_SERIES.keys(), sorted(used - catalogue.keys())
    assert set(re.findall(r"\blifecycled_[a-z0-9_]+", DASHBOARD.read_text())) <= catalogue.keys()
    assert [p for q in queries for p in label_problems(q, catalogue)] == []
    wanted = {
        "lifecycled_queue_depth",
        "lifecycled_commands_total",
        "lifecycled_retries_total",
        "lifecycled_dead_letters",
        "lifecycled_recover_ops_total",
        "lifecycled_guests",
        "lifecycled_orphans_total",
        "lifecycled_reconcile_runs_total",
        "lifecycled_pve_requests_total",
        "lifecycled_pve_request_duration_seconds_bucket",
        "lifecycled_op_duration_seconds_bucket",
        "lifecycled_journal_commit_seconds_bucket",
    }
    assert wanted <= used
    assert any('observed="LOST"' in q for q in queries)


def test_alert_rules_parse_and_carry_severity_summary_runbook() -> None:
    """Each rule has an expr, a severity, a summary and a runbook; YAML agrees when importable."""
    text = ALERTS.read_text(encoding="utf-8")
    rules = alert_rules(text)
    assert len(rules) == text.count("- alert:") >= 6
    for rule in rules:
        assert rule.get("expr"), rule["alert"]
        assert rule.get("severity") in ("critical", "warning"), rule["alert"]
        assert rule.get("summary") and rule.get("runbook"), rule["alert"]
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        return  # the line-based reading above is the check; a full parse is a bonus
    parsed = yaml.safe_load(text)["groups"][0]["rules"]
    assert [(r["alert"], r["expr"].strip()) for r in parsed] == [
        (r["alert"], r["expr"]) for r in rules
    ]


def test_alert_rules_use_only_existing_metrics_and_labels() -> None:
    """Every metric and label in the rules' expressions exists in lifecycled.metrics.Metrics."""
    catalogue = metric_catalogue()
    rules = alert_rules(ALERTS.read_text(encoding="utf-8"))
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names - catalogue.keys() <= PROMETHEUS_SERIES.keys(), (rule["alert"], names)
        assert label_problems(rule["expr"], catalogue) == [], rule["alert"]
    assert set(re.findall(r"\blifecycled_[a-z0-9_]+", ALERTS.read_text())) <= catalogue.keys()


def test_alert_rules_cover_the_operational_failures() -> None:
    """Dead letters, LOST guests, unresolved Recover, stalled reconcile, PVE errors, daemon down."""
    rules = {r["alert"]: r for r in alert_rules(ALERTS.read_text(encoding="utf-8"))}
    expected = {
        "LifecycledDeadLetters": ("lifecycled_dead_letters > 0", "lifecycled dlq list"),
        "LifecycledGuestLost": ('lifecycled_guests{observed="LOST"}', "lifecycled guests list"),
        "LifecycledRecoverUnresolved": (
            'increase(lifecycled_recover_ops_total{result="unresolved"}[15m]) > 0',
            "lifecycled recover --dry-run",
        ),
        "LifecycledReconcileStalled": (
            'increase(lifecycled_reconcile_runs_total{outcome="ok"}[15m]) == 0',
            "lifecycled reconcile --dry-run",
        ),
        "LifecycledPveErrorsHigh": ("lifecycled_pve_requests_total", "lifecycled"),
        "LifecycledDown": ("up{", "systemctl status lifecycled"),
    }
    for name, (expr_part, command) in expected.items():
        assert expr_part in rules[name]["expr"], name
        assert command in rules[name]["runbook"], name
    assert rules["LifecycledDeadLetters"]["for"] == "5m"


# --- systemd unit and container image ---------------------------------------------------------


def test_systemd_unit_has_the_hardening_directives() -> None:
    """The unit runs unprivileged, sandboxed, with credentials, a state dir and a graceful stop."""
    service = unit_directives(UNIT.read_text(encoding="utf-8"))["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30s",
        "User": "lifecycled",
        "Restart": "on-failure",
        "StateDirectory": "lifecycled",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "UMask": "0077",
        "KillMode": "mixed",
        "KillSignal": "SIGTERM",
    }
    for key, value in expected.items():
        assert value in service.get(key, []), key
    assert "@system-service" in service["SystemCallFilter"]
    assert "/var/lib/lifecycled" in service["ReadWritePaths"]
    assert int(service["LimitNOFILE"][0]) >= 4096
    # Long enough for a dispatch in progress: a guest read (30 s) plus a POST (60 s).
    assert int(service["TimeoutStopSec"][0].removesuffix("s")) >= 90
    credentials = dict(c.split(":", 1) for c in service["LoadCredential"])
    assert {"pve.token", "api.tokens"} <= credentials.keys()
    assert all(path.startswith("/etc/") for path in credentials.values())


def test_systemd_execstart_is_a_valid_run_with_credentials() -> None:
    """ExecStart uses real `run` flags; with the TOML, secrets come from %d and the journal from the state dir."""
    sections = unit_directives(UNIT.read_text(encoding="utf-8"))
    service = sections["Service"]
    argv = shlex.split(service["ExecStart"][0].replace("%d", CREDENTIALS_DIR))
    assert argv[:2] == ["/usr/bin/lifecycled", "run"]
    config, flags = flags_to_settings(argv[2:])
    assert config == Path("/etc/lifecycled/lifecycled.toml")
    settings = load_settings(flags, env={}, config_file=TOML)
    credentials = {c.split(":", 1)[0] for c in service["LoadCredential"]}
    for path in (settings.pve_token_file, settings.api_token_file, settings.pve_ca_file):
        assert path is not None and path.parent == Path(CREDENTIALS_DIR)
        assert path.name in credentials
    assert settings.db.parent == Path("/var/lib") / service["StateDirectory"][0]
    assert is_loopback(settings.listen_host)


def test_containerfile_runs_unprivileged_with_an_api_token() -> None:
    """The image: two stages, non-root numeric user, volume, port, healthcheck; 0.0.0.0 needs
    tokens and TLS (no bearer token in clear text)."""
    text = CONTAINERFILE.read_text(encoding="utf-8")
    instructions = containerfile_instructions(text)
    by_word: dict[str, list[str]] = {}
    for word, args in instructions:
        by_word.setdefault(word, []).append(args)
    assert len(by_word["FROM"]) == 2
    assert "python:3.11-slim" in text and "pip wheel" in text
    user = by_word["USER"][-1].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user)
    assert json.loads(by_word["ENTRYPOINT"][-1]) == ["lifecycled"]
    cmd = json.loads(by_word["CMD"][-1])
    assert cmd[0] == "run"
    config, flags = flags_to_settings(cmd[1:])
    assert config == Path("/etc/lifecycled/lifecycled.toml")
    healthcheck = by_word["HEALTHCHECK"][-1]
    assert "/healthz" in healthcheck and '"python"' in healthcheck
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
    env = {
        key: value
        for args in by_word["ENV"]
        for key, value in re.findall(r"(LIFECYCLED_[A-Z_]+)=(\S+)", args)
    }
    fields = {f.name for f in attrs.fields(Settings)}
    assert {key.removeprefix("LIFECYCLED_").lower() for key in env} <= fields
    settings = load_settings(flags, env=env, config_file=TOML)
    assert settings.listen_host == "0.0.0.0"
    assert settings.api_token_file is not None  # a non-loopback listener MUST have tokens
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    assert settings.insecure_listen is False
    assert [str(settings.listen_port)] == by_word["EXPOSE"]
    assert [str(settings.db.parent)] == by_word["VOLUME"]


# --- client -----------------------------------------------------------------------------------


def test_client_help_runs() -> None:
    """`python examples/client.py --help` exits 0 and documents the key and token options."""
    result = subprocess.run(
        [sys.executable, str(CLIENT), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--key", "--order-id", "--token-file", "--url"):
        assert option in result.stdout


class _FakeDaemon(BaseHTTPRequestHandler):
    """Answers /v1/ops from a script of (status, body, headers) per method."""

    script: ClassVar[dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]]] = {}
    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, dict(self.headers), body))
        status, payload, headers = self.script[self.command].pop(0)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def fake_daemon() -> Iterator[str]:
    _FakeDaemon.script = {}
    _FakeDaemon.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeDaemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _op(state: str, **extra: Any) -> dict[str, Any]:
    return {"id": 7, "state": state, "attempts": 1, "error": None, **extra}


def test_client_retries_with_the_same_key_then_waits_for_success(
    fake_daemon: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 503 is retried with the same key and body; the op is polled to succeeded; exit 0."""
    token = tmp_path / "token"
    token.write_text("# ours\nci:s3cret\n")
    _FakeDaemon.script = {
        "POST": [
            (
                503,
                {"error": {"code": "journal_unavailable", "message": "retry"}},
                {"Retry-After": "0"},
            ),
            (202, _op("pending", deduplicated=False), {}),
        ],
        "GET": [(200, _op(state), {}) for state in ("dispatching", "running", "succeeded")],
    }
    client = load_client()
    argv = ["resize", "101", "--order-id", "42", "-p", "size=64G", "-p", "cores=4"]
    argv += ["--url", fake_daemon, "--token-file", str(token), "--poll-interval", "0.01"]
    assert client.main(argv) == 0
    posts = [s for s in _FakeDaemon.seen if s[0] == "POST"]
    assert len(posts) == 2 and posts[0][3] == posts[1][3]
    sent = json.loads(posts[0][3])
    assert sent["idempotency_key"] == "order-42-resize"
    assert sent["params"] == {"size": "64G", "cores": 4}
    assert [s[1] for s in _FakeDaemon.seen if s[0] == "GET"] == ["/v1/ops/7"] * 3
    assert all(s[2]["Authorization"] == "Bearer s3cret" for s in _FakeDaemon.seen)
    assert json.loads(capsys.readouterr().out)["state"] == "succeeded"


def test_client_reports_a_refusal_in_one_line_and_a_failed_op_with_exit_1(
    fake_daemon: str,
) -> None:
    """A 401 or 409 ends with one error line (exit 1) and is never retried; a failed op returns 1."""
    client = load_client()
    _FakeDaemon.script = {
        "POST": [
            (401, {"error": {"code": "unauthorized", "message": "invalid bearer token"}}, {}),
            (409, {"error": {"code": "idempotency_conflict", "message": "key in use"}}, {}),
            (
                200,
                _op("failed", deduplicated=True, error={"class": "permanent", "message": "x"}),
                {},
            ),
        ]
    }
    argv = ["stop", "101", "--key", "k1", "--url", fake_daemon]
    for expected in (
        "HTTP 401 unauthorized: invalid bearer token",
        "HTTP 409 idempotency_conflict",
    ):
        with pytest.raises(SystemExit) as refused:
            client.main(argv)
        assert isinstance(refused.value.code, str) and "\n" not in refused.value.code
        assert expected in refused.value.code
    assert client.main(argv) == 1
    assert len(_FakeDaemon.seen) == 3


#: promtool from PATH, else the one `make tools` takes out of Debian's prometheus package.
_LOCAL_PROMTOOL = Path(__file__).parents[2] / ".tools/prometheus/usr/bin/promtool"
PROMTOOL = shutil.which("promtool") or (str(_LOCAL_PROMTOOL) if _LOCAL_PROMTOOL.exists() else None)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (make tools)")
def test_promtool_accepts_the_alert_rules_and_every_dashboard_query(tmp_path: Path) -> None:
    """promtool checks the alert rules, and every dashboard query as a recording rule (PromQL syntax)."""
    assert PROMTOOL is not None
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    queries = dashboard_queries(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, query in enumerate(queries):
        expr = query.replace("$job", ".*").replace("$instance", ".*")
        expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(queries)} rules found" in checked.stdout
