"""deploy/grafana-dashboard.json: valid Grafana dashboard JSON with Prometheus and Loki data
sources as variables, the panels the issue asks for, and every PromQL expression parsed by
promtool's own parser with the template variables substituted. (The kernel test
tests/kernel/test_prometheus_alerts.py also runs each of them in a real Prometheus.) No Loki
or Grafana is installable here: LogQL queries are checked for shape and for the stream labels
oomtrace's Loki paths set, not parsed by Loki."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.alerting import dashboard as D
from tests.alerting.rules import DEPENDENCIES, exported_metric_names
from tracer.sinks.loki import LABEL_NAMES

DASHBOARD = D.load()
QUERIES = D.queries(DASHBOARD)
PROMQL = [q for q in QUERIES if q.datasource == "prometheus"]
LOGQL = [q for q in QUERIES if q.datasource == "loki"]
VALUES = {**D.BUILTINS, "job": "oomtrace", "namespace": D.ALL, "pod": D.ALL, "vm": D.ALL, "kind": ".+"}
PANEL_TYPES = {"row", "stat", "timeseries", "bargauge", "table", "logs", "gauge", "text", "state-timeline"}


def non_row_panels() -> list[dict[str, Any]]:
    return [p for p in D.panels(DASHBOARD) if p["type"] != "row"]


def test_the_file_is_one_json_object_with_the_keys_grafana_imports() -> None:
    assert json.loads(D.DASHBOARD_FILE.read_text()) == DASHBOARD
    assert isinstance(DASHBOARD["title"], str) and DASHBOARD["title"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", DASHBOARD["uid"])
    assert isinstance(DASHBOARD["schemaVersion"], int) and DASHBOARD["schemaVersion"] >= 36
    assert isinstance(DASHBOARD["panels"], list) and DASHBOARD["panels"]
    assert "id" not in DASHBOARD or DASHBOARD["id"] is None  # an id would clash on import
    assert "__inputs" not in DASHBOARD  # data sources are variables, not import-time inputs


def test_prometheus_and_loki_are_datasource_variables() -> None:
    sources = {v["name"]: v["query"] for v in D.variables(DASHBOARD) if v["type"] == "datasource"}
    assert sources == {"prometheus": "prometheus", "loki": "loki"}


def test_every_panel_has_a_unique_id_a_known_type_and_a_place_on_the_24_column_grid() -> None:
    ids = [p["id"] for p in D.panels(DASHBOARD)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for panel in D.panels(DASHBOARD):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in ("x", "y", "w", "h")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in D.panels(DASHBOARD):
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells.get((x, y))}"
                cells[(x, y)] = panel["title"]


def test_every_query_uses_one_of_the_datasource_variables_and_has_a_unique_ref_id() -> None:
    assert all(q.datasource in ("prometheus", "loki") for q in QUERIES), [
        q.where for q in QUERIES if q.datasource not in ("prometheus", "loki")
    ]
    for panel in non_row_panels():
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t.get("expr") for t in panel["targets"]), panel["title"]


def test_every_variable_a_query_uses_is_defined_or_a_grafana_builtin() -> None:
    defined = {v["name"] for v in D.variables(DASHBOARD)} | set(D.BUILTINS)
    for query in QUERIES:
        assert D.used_variables(query.expr) <= defined, query.where


@pytest.mark.parametrize("query", PROMQL, ids=[q.where for q in PROMQL])
def test_every_promql_expression_parses_with_promtool(query: D.Query) -> None:
    expr = D.substitute(query.expr, VALUES)
    assert "$" not in expr
    [error] = D.promql_errors([expr])
    assert error is None, error


def test_the_promql_check_rejects_a_broken_expression() -> None:
    broken = D.substitute(PROMQL[0].expr, VALUES)[:-1]  # drop a closing bracket
    assert D.promql_errors([broken]) != [None]


def test_every_metric_the_dashboard_reads_is_exported_by_the_tracer_or_a_documented_dependency() -> None:
    used = {m for q in PROMQL for m in re.findall(r"\boomtrace_\w+", q.expr)}
    used -= {"oomtrace_"}  # the prefix inside a {__name__=~"oomtrace_(...)"} matcher
    assert used - exported_metric_names() <= DEPENDENCIES


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    titles = {p["title"]: p for p in non_row_panels()}
    by_pod = titles["Memcg reclaims per second, by pod"]["targets"][0]["expr"]
    by_vm = titles["Memcg reclaims per second, by VM"]["targets"][0]["expr"]
    assert "by (namespace, pod)" in by_pod and "oomtrace_near_oom_reclaims_total" in by_pod
    assert "by (namespace, vm)" in by_vm
    timeline = titles["OOM kills, by pod"]
    assert timeline["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars"
    assert "oomtrace_oom_kills_total" in timeline["targets"][0]["expr"]
    top = titles["Top VMs by overhead pressure"]["targets"][0]["expr"]
    assert top.startswith("topk(10,") and "oomtrace_vm_overhead_budget_bytes" in top
    events = titles["OOM events"]
    assert events["type"] == "table" and D.datasource_kind(events["datasource"], DASHBOARD) == "loki"
    assert {t["id"] for t in events["transformations"]} >= {"extractFields"}


def test_every_logql_query_selects_oomtrace_streams_by_the_labels_its_loki_paths_set() -> None:
    assert LOGQL, "no Loki query in the dashboard"
    for query in LOGQL:
        match = re.match(r"\{([^}]*)\}", query.expr)
        assert match, query.where
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', match.group(1))
        assert ("job", "=", "oomtrace") in matchers, query.where
        assert {name for name, _op, _value in matchers} <= set(LABEL_NAMES), query.where
        for open_, close in ("()", "{}", "[]"):
            assert query.expr.count(open_) == query.expr.count(close), query.where
