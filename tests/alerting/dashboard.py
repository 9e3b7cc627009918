"""deploy/grafana-dashboard.json, as the tests read it: its queries, its variables, and a PromQL
check that uses promtool's own parser (each expression becomes a recording rule, and
`promtool check rules` parses it)."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.alerting.rules import REPO

DASHBOARD_FILE = REPO / "deploy/grafana-dashboard.json"

# Grafana's built-in interval variables, and what a test puts in their place. The kernel
# test passes shorter ones (its Prometheus holds a minute of data).
BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
# The value of an "All" selection: the dashboard's variables use allValue ".*".
ALL = ".*"

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)


@dataclass(frozen=True)
class Query:
    where: str  # panel title / refId, or "variable <name>"
    datasource: str  # "prometheus" or "loki"
    expr: str


def load(path: Path = DASHBOARD_FILE) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a dashboard object")
    return doc


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("templating", {}).get("list", []))


def datasource_kind(ref: Any, dashboard: Mapping[str, Any]) -> str | None:
    """ "prometheus" or "loki" for a datasource reference to one of the dashboard's datasource
    variables; None for anything else (a hard-coded uid, a missing reference)."""
    if not isinstance(ref, dict):
        return None
    match = re.fullmatch(r"\$\{(\w+)\}", str(ref.get("uid", "")))
    if not match:
        return None
    for var in variables(dashboard):
        if var.get("type") == "datasource" and var.get("name") == match.group(1):
            kind = var.get("query")
            if kind == ref.get("type") and kind in ("prometheus", "loki"):
                return str(kind)
    return None


def queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Every query in the dashboard: panel targets, query variables and annotations."""
    found: list[Query] = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            kind = datasource_kind(target.get("datasource", panel.get("datasource")), dashboard)
            found.append(
                Query(f"{panel.get('title')} / {target.get('refId')}", kind or "?", target.get("expr", ""))
            )
    for var in variables(dashboard):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        match = _LABEL_VALUES.match(text)
        # label_values(selector, label) is Grafana's, not PromQL: its selector is.
        found.append(
            Query(
                f"variable {var.get('name')}",
                datasource_kind(var.get("datasource"), dashboard) or "?",
                match.group(1) if match else text,
            )
        )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            kind = datasource_kind(annotation.get("datasource"), dashboard)
            found.append(Query(f"annotation {annotation.get('name')}", kind or "?", annotation["expr"]))
    return found


def used_variables(expr: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with each Grafana variable replaced by values[name]; KeyError for an unknown one."""

    def one(m: re.Match[str]) -> str:
        return values[next(g for g in m.groups() if g)]

    return _VARIABLE.sub(one, expr)


def promql_errors(exprs: list[str]) -> list[str | None]:
    """For each expression: None if promtool's parser accepts it, else its error message."""
    results: list[str | None] = []
    with tempfile.TemporaryDirectory(prefix="oomtrace-promql-") as tmp:
        for i, expr in enumerate(exprs):
            path = Path(tmp) / f"q{i}.yaml"
            doc = {"groups": [{"name": "dashboard", "rules": [{"record": "dashboard:query", "expr": expr}]}]}
            path.write_text(yaml.safe_dump(doc))
            result = subprocess.run(
                ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
            )
            results.append(None if result.returncode == 0 else (result.stdout + result.stderr).strip())
    return results
