"""deploy/prometheus-rules.yaml checked with promtool (Debian's `prometheus` package): the rule
file passes `promtool check rules`, the `promtool test rules` cases in tests/alerting/ pass and
make every alert both fire and stay quiet, the PrometheusRule manifest carries the same rules,
every alert has its annotations and a runbook, and every metric the rules read is one the
tracer exports (or a dependency docs/alerting.md names)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.alerting import rules as R
from tools import alert_manifest

TEST_FILES = sorted(R.TESTS_DIR.glob("*.test.yaml"))
DOCS = R.REPO / "docs/alerting.md"
README = R.REPO / "README.md"
# Metrics whose series are per pod: their alerts must say which namespace, pod and VM.
POD_METRICS = re.compile(r"oomtrace_(near_oom_\w+|memcg_ooms_total|oom_kills_total|vm_\w+)")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), "promtool is missing: scripts/install.sh installs Debian's prometheus"
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=60
    )


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for rule in R.rules() if "alert" in rule]


def unit_test_cases() -> list[tuple[str, str, list[Any]]]:
    """(test file, alertname, exp_alerts) for every alert_rule_test in tests/alerting/."""
    cases = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.append((path.name, case["alertname"], case.get("exp_alerts") or []))
    return cases


def test_promtool_accepts_the_rule_file_and_finds_no_duplicate_rules() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(R.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(R.rules())} rules found" in result.stdout


def test_the_rule_file_has_the_alerts_the_issue_asks_for() -> None:
    assert set(R.alert_names()) == {
        "OomtraceNearOomReclaim",
        "OomtraceNearOomChargeFailures",
        "OomtraceMemcgOom",
        "OomtraceOomKill",
        "OomtraceVmOomKill",
        "OomtraceVmOverheadNearBudget",
        "OomtraceDown",
        "OomtraceAbsent",
        "OomtraceEventsLost",
    }


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[p.name for p in TEST_FILES])
def test_the_promtool_unit_tests_pass(test_file: Path) -> None:
    result = promtool("test", "rules", test_file.name, cwd=test_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_promtool_unit_tests_load_the_real_rule_file_not_a_copy() -> None:
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [R.RULES_FILE], path.name


def test_every_alert_has_a_promtool_case_where_it_fires_and_one_where_it_stays_quiet() -> None:
    cases = unit_test_cases()
    for name in R.alert_names():
        assert any(alert == name and exp for _f, alert, exp in cases), f"{name} never fires in tests/alerting"
        assert any(alert == name and not exp for _f, alert, exp in cases), f"{name} is never shown quiet"


def test_every_firing_expectation_compares_the_rendered_annotations(tmp_path: Path) -> None:
    for file, alert, expected in unit_test_cases():
        for exp in expected:
            assert set(exp.get("exp_annotations", {})) == {"summary", "description"}, (file, alert)


def test_a_wrong_expectation_makes_promtool_fail(tmp_path: Path) -> None:
    """The harness can fail: the same cases, one rendered word changed, against the real rules."""
    source = R.TESTS_DIR / "pre-oom.test.yaml"
    text = source.read_text().replace("10.0 times per second", "9.0 times per second")
    assert text != source.read_text()
    doc = yaml.safe_load(text)
    doc["rule_files"] = [str(R.RULES_FILE)]
    mutated = tmp_path / "mutated.test.yaml"
    mutated.write_text(yaml.safe_dump(doc))
    result = promtool("test", "rules", str(mutated))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_the_prometheus_rule_manifest_is_the_rule_file_generated_into_a_prometheus_rule() -> None:
    manifest_text = alert_manifest.MANIFEST_FILE.read_text()
    assert manifest_text == alert_manifest.manifest_text(), "run: python -m tools.alert_manifest"
    manifest = yaml.safe_load(manifest_text)
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] == "oomtrace"
    assert manifest["spec"] == R.load()


def test_the_time_scaled_copy_for_the_integration_test_passes_promtool_and_changes_only_durations(
    tmp_path: Path,
) -> None:
    scaled = R.scaled_rules(60)
    path = tmp_path / "scaled.yaml"
    path.write_text(yaml.safe_dump(scaled))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr

    for before, after in zip(R.rules(), R.rules(scaled), strict=True):
        assert {k: v for k, v in before.items() if k not in ("for", "expr")} == {
            k: v for k, v in after.items() if k not in ("for", "expr")
        }
        if "for" in before:
            assert R.duration_ms(after["for"]) * 60 == R.duration_ms(before["for"])
        # Same expression once every duration is blanked out.
        blank = re.compile(r"\b[0-9]+(?:ms|s|m|h|d|w|y)\b")
        assert blank.sub("D", before["expr"]) == blank.sub("D", after["expr"])


@pytest.mark.parametrize(
    ("expr", "scaled"),
    [
        ("rate(x[5m])", "rate(x[5s])"),
        ("increase(x[10m]) > 0", "increase(x[10s]) > 0"),
        ("x unless x offset 10m", "x unless x offset 10s"),
        ("max_over_time(rate(x[5m])[1h:1m])", "max_over_time(rate(x[5s])[60s:1s])"),
        ("rate(x[1h30m])", "rate(x[90s])"),
        ("rate(x[30s])", "rate(x[500ms])"),
        ('up{job="5m"} == 0', 'up{job="5m"} == 0'),
    ],
    ids=["range", "increase", "offset", "subquery", "compound", "sub-second", "label-value-untouched"],
)
def test_the_time_scale_transform_divides_each_promql_duration_by_sixty(expr: str, scaled: str) -> None:
    assert R.scale_expr(expr, 60) == scaled


def test_every_alert_has_a_severity_and_a_summary_and_description() -> None:
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) >= {"summary", "description"}, rule["alert"]


def test_every_pod_alert_names_the_namespace_pod_and_vm() -> None:
    for rule in alerting_rules():
        if not POD_METRICS.search(rule["expr"]):
            continue
        for key in ("summary", "description"):
            text = rule["annotations"][key]
            assert "$labels.namespace" in text and "$labels.pod" in text, (rule["alert"], key)
            assert "$labels.instance" in text, (rule["alert"], key)
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        # OomtraceOomKill selects vm="": it names the VM alert instead.
        assert "$labels.vm" in text or "OomtraceVmOomKill" in text, rule["alert"]


def test_every_tracer_alert_names_the_tracer_it_is_about() -> None:
    for rule in alerting_rules():
        if POD_METRICS.search(rule["expr"]):
            continue
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert "$labels.instance" in text or 'job="oomtrace"' in text, rule["alert"]


def test_every_alert_has_a_runbook_section_in_the_readme() -> None:
    runbooks = README.read_text().split("## Alert runbooks", 1)[1].split("\n## ", 1)[0]
    headings = set(re.findall(r"^### (\w+)$", runbooks, re.M))
    assert set(R.alert_names()) <= headings


def test_every_metric_the_rules_read_is_exported_by_the_tracer_or_a_documented_dependency() -> None:
    used = {m for rule in R.rules() for m in re.findall(r"\boomtrace_\w+", rule["expr"])}
    missing = used - R.exported_metric_names()
    assert missing <= R.DEPENDENCIES, (
        f"the rules read metrics nobody exports: {sorted(missing - R.DEPENDENCIES)}"
    )
    docs = DOCS.read_text()
    for name in R.DEPENDENCIES:
        assert name in docs, f"{name} is not documented as a dependency in docs/alerting.md"


def test_no_rule_groups_or_aggregates_by_an_unbounded_label() -> None:
    for rule in R.rules():
        for forbidden in ("pod_uid", "container_id", "pid", "cgroup", "uid"):
            assert not re.search(rf"\b{forbidden}\b", rule["expr"]), (rule["alert"], forbidden)
